# The roles of a serving step's kernels and the buckets of tokens a step, shared by kernel_roles.py and
# serve_runs.py. role_of(name, state, duration_ns) names a kernel's role; `state` ({'gemm': 3} at the start
# of a trace) counts the GEMMs since the last attention launch: o-proj, gate|up, down, then the next
# layer's q|k|v (or the lm-head, after the last layer). new_step(state) at each step's first kernel makes
# its first GEMM the first layer's q|k|v (without it, that GEMM came fifth after the last attention).
import re

roles = ['o-proj', 'gate|up', 'down', 'qkv']
edges = [64, 128, 192, 255, 256, 320, 384, 512, 1024, 2048, 1 << 30]
def bucket(t):
    lo = 1
    for e in edges:
        if t <= e: return f"{lo}-{e}" if lo != e else str(e)
        lo = e + 1
def role_of(name, state, d):
    if 'attention_kernel' in name or 'fold_kernel' in name:
        if 'attention_kernel' in name: state['gemm'] = -1
        return 'attention'
    if 'splitKreduce' in name:
        return 'gemm ' + roles[min(state['gemm'], 3)] if state['gemm'] >= 0 else 'gemm ?'
    if 'gemm_kernel' in name or 'nvjet' in name:
        state['gemm'] += 1
        g = state['gemm']
        # The q|k|v GEMM with its heads epilogue (qkv_projection; its template's head-size argument, 64 or 128,
        # is followed by the split flag in current builds) is q|k|v however long it runs (a long prefill
        # step's passes 150 us).
        if g == 3 and re.search(r'ELi(64|128)E(Lb[01]E)?EEvN', name): return 'gemm qkv'
        if g == 3 and d > 150000: return 'gemm lm-head'
        return 'gemm ' + (roles[g] if g < 4 else 'lm-head/other')
    for key, r in (('silu', 'silu_and_mul'), ('rms_norm', 'rms_norm'), ('rope', 'rope'), ('write_kv', 'write_kv'),
                   ('embedding', 'embedding')):
        if key in name: return r
    if any(k in name for k in ('sample', 'logprob', 'argmax', 'softmax')): return 'sampling/logprobs'
    return 'other: ' + name[:60]


def new_step(state):
    """A step begins: its first GEMM is layer 0's q|k|v, as after a layer's down projection."""
    state['gemm'] = 2


def is_step_start(rows, names, i):
    """Whether kernel i opens a step: the token embedding, followed by rms_norm."""
    return 'embedding' in names[rows[i][2]] and i + 1 < len(rows) and 'rms_norm' in names[rows[i + 1][2]]


def step_starts(rows, names):
    """The indices of the kernels that open a step (is_step_start)."""
    return [i for i in range(len(rows)) if is_step_start(rows, names, i)]


def run_bounds(rows, names, steps, starts=None):
    """The serving runs of a trace cut by their step count (every run of one workload takes the same steps, so a
    warm-up run and the timed run after it, which no idle gap separates, come apart): each whole run's kernel
    range (lo, hi), the last run's to the trace's end. `starts`: step_starts(rows, names), where the caller
    has it already."""
    if starts is None:
        starts = step_starts(rows, names)
    bounds = []
    for r in range(len(starts) // steps):
        hi = starts[(r + 1) * steps] if (r + 1) * steps < len(starts) else len(rows)
        bounds.append((starts[r * steps], hi))
    return bounds


def step_tokens(rows, i):
    """The tokens of the step kernel i opens (is_step_start): the grid of the rms_norm after the embedding, one
    CTA a token (its grid's x in current builds, y in older ones), or the embedding's grid y, which stops at
    512 (a prefill step of 2048 tokens once fell in the 385-512 bucket)."""
    return max(rows[i][4], rows[i + 1][3], rows[i + 1][4])


def walk(rows, names, lo, hi):
    """The kernels lo..hi-1 of a trace (rows of trace_file.read) with their roles: yields (i, role, bucket of
    the step's tokens, whether kernel i opens a step, the time in ns from the end of the kernel before it in
    lo..hi-1 (for the first: its start) to its own end, what it adds to the wall time)."""
    state, cur, prev_end = {'gemm': 3}, '?', None
    for i in range(lo, hi):
        s, e, k = rows[i][0], rows[i][1], rows[i][2]
        first = is_step_start(rows, names, i)
        if first:
            cur = bucket(step_tokens(rows, i))
            new_step(state)
        start = s if prev_end is None else prev_end
        prev_end = e if prev_end is None else max(prev_end, e)
        yield i, role_of(names[k], state, e - s), cur, first, max(e, start) - start
