"""Warp-stall samples per CUDA source line from an ncu source page exported with
`ncu -i REPORT --page source --csv --print-source cuda,sass` (a build with -lineinfo).

Such an export holds one section per (kernel profile, source file): a "File Path" row, a "Function Name"
row, a header row, then one row per source line (its totals) followed by that line's SASS rows. A kernel
profile starts at the first file of its sections (the same file name repeats for each profile). This sums
the source-line rows of profile K (0-based, in the order ncu profiled them) and prints the N lines with
the most samples, their share, their text (read from --root, which replaces the build's source prefix)
and their three largest stall reasons. Lines inlined at several levels are counted at each level, so the
shares can add up to more than 100%.

usage: python3 bench/trace/ncu_source_lines.py SRC.csv[.xz] K [N] [--root BUILD_PREFIX=LOCAL_PREFIX]...
"""
import collections
import csv
import lzma
import os
import sys


def sections(lines):
    first = None
    profiles, cur = [], None
    for row in csv.reader(lines):
        if row and row[0] == "File Path":
            if first is None:
                first = row[1]
            if row[1] == first:
                cur = []
                profiles.append(cur)
        if cur is not None:
            cur.append(row)
    return profiles


def main():
    args, roots, argv = [], [], sys.argv[1:]
    while argv:
        a = argv.pop(0)
        if a == "--root" and argv:
            roots.append(argv.pop(0))
        elif a.startswith("--root="):
            roots.append(a[len("--root="):])
        else:
            args.append(a)
    if len(args) < 2:
        sys.exit(__doc__)
    path, k = args[0], int(args[1])
    top = int(args[2]) if len(args) > 2 else 40
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt") as f:
        profiles = sections(f.read().split("\n"))
    rows = profiles[k]
    agg, stalls, fname, hdr, total = collections.Counter(), collections.defaultdict(collections.Counter), None, None, 0
    for row in rows:
        if not row:
            continue
        if row[0] == "File Path":
            fname = row[1]
        elif row[0] == "Line No":
            hdr = row
        elif row[0] and row[0] != "Function Name" and hdr:
            try:
                s = int(row[4]) if row[4] not in ("-", "") else 0
            except ValueError:
                continue
            agg[(fname, int(row[0]))] += s
            total += s
            for j, name in enumerate(hdr):
                if name.startswith("stall_") and "Not Issued" not in name and j < len(row) and row[j].isdigit():
                    stalls[(fname, int(row[0]))][name[6:]] += int(row[j])
    cache = {}

    def text(f, n):
        p = f
        for r in roots:
            a, b = r.split("=", 1)
            if p.startswith(a):
                p = b + p[len(a):]
        if p not in cache:
            cache[p] = open(p).read().split("\n") if os.path.exists(p) else []
        lines = cache[p]
        return lines[n - 1].strip()[:90] if 0 < n <= len(lines) else ""

    print(f"profile {k} of {len(profiles)}: {total} samples (summed over source lines)")
    for (f, n), s in agg.most_common(top):
        st = " ".join(f"{a}:{b}" for a, b in stalls[(f, n)].most_common(3))
        print(f"{100 * s / max(total, 1):5.1f}% {os.path.basename(f)}:{n:<5} {text(f, n):90s} | {st}")


if __name__ == "__main__":
    main()
