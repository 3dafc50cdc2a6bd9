"""Warp-stall samples by SASS address range from an ncu source page exported without line info:
`ncu -i REPORT --page source --print-source sass --csv` (one kernel profile: a kernel-name row, a header
row, then one row per SASS instruction in address order).

Prints the samples of the whole kernel, then of each range given as FIRST:LAST (instruction indices,
0-based, LAST excluded) with the instructions it executed and its three largest stall reasons, and the N
instructions with the most samples (index, samples, executions, text). Which range is the main loop and
which the epilogue is read off that listing (the HGMMA instructions and the loop's branch back, the
STS / LDS / STG of the stores).

usage: python3 bench/trace/ncu_sass_ranges.py SASS.csv[.xz] [FIRST:LAST ...] [--top N]
"""
import csv
import lzma
import sys


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    top = 40
    if "--top" in args:
        i = args.index("--top")
        top = int(args[i + 1])
        del args[i:i + 2]
    path, spans = args[0], args[1:]
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt") as f:
        rows = list(csv.reader(f))
    hdr_at = next((i for i, r in enumerate(rows) if r and r[0] == "Address"), None)
    if hdr_at is None:
        sys.exit(f"{path}: no header row starting with 'Address' (not an ncu --page source --csv export?)")
    hdr, data = rows[hdr_at], [r for r in rows[hdr_at + 1:] if len(r) == len(rows[hdr_at])]
    try:
        i_smp = hdr.index("Warp Stall Sampling (All Samples)")
        i_src = hdr.index("Source")
        i_exe = hdr.index("Instructions Executed")
    except ValueError as e:
        sys.exit(f"{path}: missing column ({e}); export with --section SourceCounters")
    stalls = {h: hdr.index(h) for h in hdr if h.startswith("stall_") and "Not Issued" not in h}
    num = lambda r, i: int(r[i].replace(",", "") or 0)
    total = sum(num(r, i_smp) for r in data)
    print(f"{len(data)} instructions, {total} samples")
    for span in spans:
        lo, hi = (int(x) for x in span.split(":"))
        part = data[lo:hi]
        s = sum(num(r, i_smp) for r in part)
        ex = sum(num(r, i_exe) for r in part)
        reasons = sorted(((sum(num(r, c) for r in part), h) for h, c in stalls.items()), reverse=True)[:3]
        print(f"[{lo}, {hi}): {s} samples ({100.0 * s / max(total, 1):.1f}%), {ex} executed; "
              + ", ".join(f"{h} {v}" for v, h in reasons))
    print(f"top {top} instructions by samples (index samples executed text):")
    best = sorted(range(len(data)), key=lambda k: -num(data[k], i_smp))[:top]
    for k in sorted(best):
        print(f"{k:6d} {num(data[k], i_smp):7d} {num(data[k], i_exe):10d}  {data[k][i_src].strip()[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
