# Reads a kernel trace of bench/trace/ktrace.cpp: lines "start end id gridX gridY", then "#names" and
# "id name" lines. Returns (rows, names): rows (start, end, id, grid x, grid y) sorted by start, names by id.
def read(path):
    rows, names, in_names = [], {}, False
    for line in open(path):
        if line.startswith('#names'):
            in_names = True
            continue
        if in_names:
            i, n = line.rstrip('\n').split(' ', 1)
            names[int(i)] = n
        else:
            f = line.split()
            rows.append((int(f[0]), int(f[1]), int(f[2]), int(f[3]) if len(f) > 3 else 0, int(f[4]) if len(f) > 4 else 0))
    rows.sort()
    return rows, names
