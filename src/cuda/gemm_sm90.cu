// Host side of the Hopper GEMM: tensor maps, tile configurations, the persistent launch.
//
// Every configuration is a wgmma kernel with 64-wide K stages (see gemm_sm90.cuh), so the choice among
// them (by M, N and the SM count) never changes a bit of any output; it only trades weight-bandwidth
// parallelism (small tiles, many CTAs) against tensor-core efficiency (large tiles).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "bik/attention.h"
#include "core/policy.h"
#include "cuda/gemm.h"
#include "cuda/gemm_host.h"
#include "cuda/gemm_sm90.cuh"
#include "cuda/gemm_sm90_swap_wide.h"
#include "cuda/tensor_map.h"

namespace bik::cuda {
namespace gemm_detail {
namespace {

using namespace sm90;

// The value among `choices` that the environment variable `var` spells exactly, or none when it is unset
// or spells none of them: the BIK_GEMM_* switches below, read at each call.
template <class E>
std::optional<E> env_switch(const char* var, std::initializer_list<std::pair<const char*, E>> choices) {
  if (const char* e = std::getenv(var))
    for (const auto& [name, value] : choices)
      if (std::strcmp(e, name) == 0) return value;
  return std::nullopt;
}
// Stages fill about 192 KB of the 227 KB a Hopper CTA may use (the 128x192 tile: 200 KB in 5 stages).
using Tile64x32 = Config<64, 32, 16>;     // decode-sized M: weight-bandwidth bound, one consumer warpgroup
using Tile64x64 = Config<64, 64, 12>;
using Tile64x128 = Config<64, 128, 8>;
using Tile64x192 = Config<64, 192, 6>;    // one wave where 64x128 needs two and 128x128 leaves SMs idle
using Tile128x32 = Config<128, 32, 9>;
using Tile128x64 = Config<128, 64, 8>;
using Tile128x128 = Config<128, 128, 6>;
using Tile128x192 = Config<128, 192, 5>;  // 96 accumulators per consumer thread; 128 tiles for M=256, N=12288
using Tile128x256 = Config<128, 256, 4>;  // large M: 128 accumulators per consumer thread

// The ping-pong forms of the two-consumer tiles (BIK_GEMM_PINGPONG=1): 64 x BN tiles, one a consumer at a
// time, so a stage holds 64 rows of A; the stage counts are those of the 64-row tiles (5 for BN = 256,
// 200 KB), about the shared memory the 128-row stages fill.
constexpr int pingpong_stages(int bn) { return bn == 32 ? 16 : bn == 64 ? 12 : bn == 128 ? 8 : bn == 192 ? 6 : 5; }
template <class Cfg>
using PingPongOf = Config<64, Cfg::BN, pingpong_stages(Cfg::BN), true>;

// The swapped tiles (Config::kSwapped): the kernel computes out^T = w a^T, so 64 weight rows (output
// columns) are the wgmma M and BN activation rows (output rows) its N, any multiple of 16. For
// 128 < M <= 256 one tile of 144, 160, 192, 208, 224 or 256 columns covers M instead of two 128-row (or
// several 64-row) tiles rounded up to 64: at M = 144 the default tiles compute 192 or 256 rows. Ping-pong consumers, each on
// whole 64 x BN tiles; stages fill the shared memory the epilogue staging leaves (at most 8).
constexpr int swap_stages(int bn) {
  // less the two consumers' epilogue staging, the 1024-byte alignment slack and up to 8 stages' barriers
  constexpr int kFree = 227 * 1024 - 2 * 4 * kSwappedEpiWarpBytes - 1024 - 256;
  return std::min(8, kFree / ((64 + bn) * kRowBytes));
}
template <int BN>
using SwapTile = Config<64, BN, swap_stages(BN), true, true>;

enum class Choice {
  T64x32, T64x64, T64x128, T64x192, T128x32, T128x64, T128x128, T128x192, T128x256,
  S144, S160, S192, S208, S224, S256,
  W112, W128, W144, W160, W176, W192, W208, W224, W240, W256,
  P64, P80, P96, P112, P128, P144, P160, P176, P192, Count
};
const char* const kChoiceNames[] = {"64x32",      "64x64",      "64x128",     "64x192",     "128x32",
                                    "128x64",     "128x128",    "128x192",    "128x256",    "swap64x144",
                                    "swap64x160", "swap64x192", "swap64x208", "swap64x224", "swap64x256",
                                    "swap128x112", "swap128x128", "swap128x144", "swap128x160", "swap128x176",
                                    "swap128x192", "swap128x208", "swap128x224", "swap128x240", "swap128x256",
                                    "pair192x64", "pair192x80", "pair192x96", "pair192x112", "pair192x128",
                                    "pair192x144", "pair192x160", "pair192x176", "pair192x192"};
static_assert(std::size(kChoiceNames) == size_t(Choice::Count), "one name per tile");

// bm x bn in the product the kernel computes: for a swapped tile, bm weight rows by bn activation rows.
struct TileShape {
  Choice c;
  int bm, bn;
  bool swapped = false;
};
constexpr TileShape kShapes[] = {{Choice::T64x32, 64, 32},       {Choice::T64x64, 64, 64},
                                 {Choice::T64x128, 64, 128},     {Choice::T64x192, 64, 192},
                                 {Choice::T128x32, 128, 32},     {Choice::T128x64, 128, 64},
                                 {Choice::T128x128, 128, 128},   {Choice::T128x192, 128, 192},
                                 {Choice::T128x256, 128, 256},   {Choice::S144, 64, 144, true},
                                 {Choice::S160, 64, 160, true},  {Choice::S192, 64, 192, true},
                                 {Choice::S208, 64, 208, true},  {Choice::S224, 64, 224, true},
                                 {Choice::S256, 64, 256, true},  {Choice::W112, 128, 112, true},
                                 {Choice::W128, 128, 128, true}, {Choice::W144, 128, 144, true},
                                 {Choice::W160, 128, 160, true}, {Choice::W176, 128, 176, true},
                                 {Choice::W192, 128, 192, true}, {Choice::W208, 128, 208, true},
                                 {Choice::W224, 128, 224, true}, {Choice::W240, 128, 240, true},
                                 {Choice::W256, 128, 256, true}, {Choice::P64, 192, 64, true},
                                 {Choice::P80, 192, 80, true},   {Choice::P96, 192, 96, true},
                                 {Choice::P112, 192, 112, true}, {Choice::P128, 192, 128, true},
                                 {Choice::P144, 192, 144, true}, {Choice::P160, 192, 160, true},
                                 {Choice::P176, 192, 176, true}, {Choice::P192, 192, 192, true}};
static_assert(std::size(kShapes) == size_t(Choice::Count), "one shape per tile");

// Clocks one SM spends on one 64-deep K stage of a tile once the pipeline runs: the larger of the
// tensor-core time (BM x BN x 64 multiply-adds at about 1500 a clock, what the 128x256 tile sustains on
// an H100) and the operand time ((BM + BN) rows of 128 bytes at about 40 bytes a clock from L2, what
// makes 128x128 reach only ~0.85 of 128x256). Small tiles are operand-bound: their SMs wait on bytes.
double stage_clocks(const TileShape& t) {
  constexpr double kMacsPerClock = 1500, kBytesPerClock = 40;
  return std::max(double(t.bm) * t.bn * kBK / kMacsPerClock, double(t.bm + t.bn) * kRowBytes / kBytesPerClock);
}

// Clocks of a whole tile: its K stages, then the pipeline drain and the epilogue (about 500 clocks, plus
// the output at about 32 elements a clock), during which the tensor cores idle.
double tile_clocks(const TileShape& t, int k) {
  const int stages = (k + kBK - 1) / kBK;
  return stages * stage_clocks(t) + 500.0 + double(t.bm) * t.bn / 32.0;
}

// BIK_GEMM_SWAP, read at each call: "0" -> never a swapped tile; "1" -> the swapped tile wherever one
// applies; unset or anything else -> where one applies and swap_pays says so. One applies for
// 128 < M <= kSwapMaxRows (448) without a bias (a swapped tile's rows are output columns) and with a 16-bit
// output in 16-byte aligned rows (its column epilogue): one column tile, the narrowest that covers M, up to
// M = 256, two that cover ceil(M / 2) past it (at most 224 rows each: past 448 two tiles of 256 rows lost to
// 128x128 on an H200, o-proj / down at M = 480 28.6 / 76.4 us against 26.0 / 73.3,
// logs_h200/3e027bf_gemm_sweep.log). It never changes a bit: each output is the same K sum of
// one wgmma per K step (wgmma_cols) from zero accumulators, rounded once.
enum class SwapMode { Off, Auto, On };
constexpr int kSwapMaxRows = 448;
bool swap_applies(const Problem& p);
SwapMode swap_mode_for(const Problem& p) {
  if (p.m <= 128 || p.m > kSwapMaxRows || !swap_applies(p)) return SwapMode::Off;
  return env_switch<SwapMode>("BIK_GEMM_SWAP", {{"0", SwapMode::Off}, {"1", SwapMode::On}}).value_or(SwapMode::Auto);
}
// The swapped tile for M (128 < M <= kSwapMaxRows): the narrowest that covers M, or half of M past 256. There is
// none of 176 columns: composed of three wgmma shapes then, at M = 168 it ran gate|up in 75.6 us against
// 70.4 without a swapped tile, down in 55.7 against 53.2 (H200, logs_h200/0459af4_gemm_swap.log), where 192
// columns win; nor of 240, never picked by the rule (M <= 224). Both are single instructions now
// (gemm_sm90_wgmma.cuh, 48e9e1b) and have not been measured since.
Choice swapped_choice(int m) {
  const int rows = m <= 256 ? m : (m + 1) / 2;
  for (Choice c : {Choice::S144, Choice::S160, Choice::S192, Choice::S208, Choice::S224})
    if (rows <= kShapes[int(c)].bn) return c;
  return Choice::S256;
}
// Where the swapped tile beat every default tile (H200, K = 4096 / 12288; bik bench gemm --sweep,
// logs_h200/e470a92_gemm_sweep.log), a rule in the weight's 64-row tiles (t = ceil(N / 64)) rather than a
// cost: tile_clocks cannot see that two ping-pong consumers share the tensor cores on 64-row tiles, nor
// that fewer, wider column tiles move fewer operand bytes through L2.
//   - t >= 2 SMs (gate|up 24576, the lm-head 151936): up to M = 224; gate|up 136..200 took 62-70 us against
//     65-78 (M = 200: 70 against 78, the default tiles computing 256 rows), the lm-head 394-414 against
//     368-456; at 232..256 the default tiles tie or win;
//   - not for K >= 8192 (down 4096 x 12288) at M <= 256: it once took M <= 208 (44-57 us against 49-60 for
//     the default tiles, then run as clusters of two), but one CTA a tile on the default tile runs M =
//     136..224 in 40.4-44.1 us, where the swapped tile took 43.3-56.5 (logs_h200/8a94bb8_gemm_down_rules.log);
//   - N >= 6144 (q|k|v): up to M = 160, 19.5-19.9 against 19.1-20.6 (from 176 on the 128x192 tile wins);
//   - 256 < M <= 448 on two column tiles, when their 2t tiles fit one wave (o-proj and down, N = 4096):
//     o-proj at M = 288..352 19-22 us against 22-23, down 49-59 against 57-62; at M = 360 / 376 o-proj
//     20.4 / 20.5 against 24.1 / 24.6 on 64x192, down 56.2 / 60.3 against 68.6 / 67.2
//     (logs_h200/6f3c476_gemm_m257_384_sweep.log); at M = 400 / 448 o-proj 22.7 / 25.0 against 25.7 / 25.9
//     on 128x128, down 63.7 / 67.7 against 73.2 / 73.9 (logs_h200/3e027bf_gemm_sweep.log).
bool swap_pays(const Problem& p, const DeviceInfo& d) {
  const int64_t t = (int64_t(p.n) + 63) / 64;
  if (p.batch != 1) return false;  // measured on single products only
  if (p.m > 256) return 2 * t <= d.sms && p.n >= 4096;
  return (t >= 2 * d.sms && p.m <= 224) || (p.n >= 6144 && p.m <= 160);
}

// The work of a walk on one SM: its waves times the area of one tile (tiles run one after the other on
// each SM, and the last wave costs a whole one however few SMs it keeps busy).
double walk_work(int64_t tiles, int64_t slots, int bm, int bn) {
  return double((tiles + slots - 1) / slots) * double(bm) * double(bn);
}

bool pingpong_for(const Problem& p, int bn);  // with the ping-pong launch, below

// The work of tile c for p on one SM (walk_work): ping-pong tiles count as their 64-row halves, pair
// tiles as pairs of column tiles on half as many slots.
double tile_work(const Problem& p, const DeviceInfo& d, Choice c) {
  const TileShape& t = kShapes[int(c)];
  const int bm = !t.swapped && t.bm == 128 && pingpong_for(p, t.bn) ? 64 : t.bm;
  const int rows = t.swapped ? p.n : p.m, cols = t.swapped ? p.m : p.n;
  const int64_t tiles_r = (rows + bm - 1) / bm, tiles_c = (cols + t.bn - 1) / t.bn;
  if (int(c) >= int(Choice::P64))
    return walk_work(tiles_r * ((tiles_c + 1) / 2) * p.batch, std::max(1, d.sms / 2), bm, t.bn);
  return walk_work(tiles_r * tiles_c * p.batch, d.sms, bm, t.bn);
}

// A family of swapped tiles (pairs, wide) and its switch `var`, read at each call: Off where the family does
// not apply (`in_range` false, more than one batch, or what a swapped tile needs missing: no bias, a 16-bit
// output in 16-byte aligned rows); else "0" -> Off, "1" -> On (the family's tile wherever it applies), unset
// or anything else -> Auto for K >= 2048 (the rule's bound on its work decides), Off below.
enum class FamilyMode { Off, Auto, On };
FamilyMode family_mode(const Problem& p, bool in_range, const char* var) {
  if (!in_range || p.batch != 1 || !swap_applies(p)) return FamilyMode::Off;
  if (const auto forced = env_switch<FamilyMode>(var, {{"0", FamilyMode::Off}, {"1", FamilyMode::On}}))
    return *forced;
  return p.k >= 2048 ? FamilyMode::Auto : FamilyMode::Off;
}
// The family tile of least work (tile_work) for T = 2..t_max column tiles of ceil(M / T) rows rounded up to
// 16, among the widths `first`'s to bn_max (the family's tiles from `first` on, in steps of 16); ties go to
// the smaller T, the wider tile. Choice::Count where no T gives such a width.
Choice least_work_columns(const Problem& p, const DeviceInfo& d, int t_max, Choice first, int bn_max) {
  const int bn_min = kShapes[int(first)].bn;
  Choice best = Choice::Count;
  double best_w = 0;
  for (int t = 2; t <= t_max; ++t) {
    const int bn = ((p.m + t - 1) / t + 15) / 16 * 16;
    if (bn > bn_max) continue;
    if (bn < bn_min) break;
    const Choice c = Choice(int(first) + (bn - bn_min) / 16);
    const double w = tile_work(p, d, c);
    if (best == Choice::Count || w < best_w) best = c, best_w = w;
  }
  return best;
}

// BIK_GEMM_PAIRS, read at each call: "0" -> never a pair tile; "1" -> the pair tile of least work wherever
// one applies (256 < M <= 512, one batch, what a swapped tile needs: no bias, a 16-bit output in 16-byte
// aligned rows); unset or anything else -> where one applies, K >= 2048, and its work is at most 0.92 of
// the other rules' tile. The pair tile for M: two, three or four column tiles of ceil(M / T) rows rounded up
// to 16 (at least 64, at most 192), the least work. On an H200 (bik bench gemm --sweep,
// logs_h200/2bb288a_gemm_pair_sweep.log): q|k|v (6144 x 4096) at M = 352 / 384 / 448 32.2 / 32.2 / 37.4 us
// on pair192x96 / x96 / x112 against 36.2 / 38.1 / 42.9 (work 0.75-0.875 of the default's); the 8B model's
// lm-head (151936 x 4096) at M = 272 / 288 / 352 / 448 585 / 586 / 687 / 928 against 675 / 673 / 776 / 985
// (0.9-0.917); at 0.94 (q|k|v at M = 272..320 on x80) 29.9-30.9 against 29.8-29.9, so not taken; o-proj
// and down (N = 4096: 22 weight tiles of 192 rows) always lost, and never have less work. It never changes
// a bit: each output is the same K sum of one wgmma per K step from zero accumulators, rounded once.
FamilyMode pair_mode_for(const Problem& p) { return family_mode(p, p.m > 256 && p.m <= 512, "BIK_GEMM_PAIRS"); }
Choice pair_choice(const Problem& p, const DeviceInfo& d) { return least_work_columns(p, d, 4, Choice::P64, 192); }

// BIK_GEMM_WIDE, read at each call: "0" -> never a wide swapped tile (128 weight rows by BN activation rows,
// two consumer warpgroups, one CTA a tile: swap128x112 .. swap128x256); "1" -> the one of least work
// wherever one applies (M > kSwapMaxRows, one batch, what a swapped tile needs: no bias, a 16-bit output in
// 16-byte aligned rows); unset or anything else -> where one applies, K >= 2048, and its work is at most
// that of the other rules' tile when that is 128x256, at most 0.92 of it otherwise. The wide tile for M: T
// column tiles of ceil(M / T) rows rounded up to 16 (128 to 256), the T of least work, the widest on ties.
// Where M leaves the 128x256 walk a part wave (N = 4096, M = 1637: 208 tiles on 132 SMs) eight column tiles
// of 208 rows fill two waves (256 tiles). On an H200 (N = 4096, bik bench gemm --sweep, every tile,
// logs_h200/22e85b7_wide_sweep.log): o-proj (K = 4096) at M = 600 / 777 / 1100 / 1637 32.3 / 39.2 / 60.2 /
// 81.0 us on swap128x160 / x208 / x144 / x208 against 38.0 / 45.4 / 76.4 / 91.2 on the default tiles
// (128x192, 128x256), down (K = 12288) 90.7 / 111.0 / 182.9 / 247.1 against 106.6 / 120.6 / 214.2 / 275.0;
// at equal work against 128x256 (M = 1024, 2048) and at 0.94 of it (1800) the wide tile ran 3-13% faster
// (o-proj 44.8 / 92.2 / 90.4 against 48.1 / 98.6 / 95.0, down 131.0 / 269.3 / 243.8 against 136.0 / 292.4 /
// 279.7), against 128x192 at equal work (M = 1500) 4-11% slower, hence the two bounds; the 112-row tile,
// the least work at M = 1300 (three waves), ran slower there than 176 rows in two (82.3 against 70.5 us),
// hence 128 rows at least. Under sustained load down at M = 600 / 1100 / 1637 took 107.2 / 194.5 / 263.9 us
// against 113.9 / 222.8 / 278.9 (22e85b7_wide_rule_{x,0}.log). It never changes a bit: each output is the same
// K sum of one wgmma per K step from zero accumulators, rounded once.
FamilyMode wide_mode_for(const Problem& p) { return family_mode(p, p.m > kSwapMaxRows, "BIK_GEMM_WIDE"); }
Choice wide_choice(const Problem& p, const DeviceInfo& d) { return least_work_columns(p, d, 64, Choice::W128, 256); }

// The tile table. Every tile is tried on every shape and M by `bik bench gemm --sweep`
// (bench/results/gemm_<gpu>.json); these rules are meant to pick within a few percent of the best.
// Waves = ceil(tiles / SMs): a persistent CTA walks its tiles one after the other, so the step takes
// about waves x (time of one tile), whatever the number of SMs the last wave leaves idle.
//   M <= 64   (decode) 64 x {32, 64, 128, 192}: fewest waves, then most tiles. Each CTA's time is set by
//             the serial K chain of its wgmmas, nearly the same for n = 32..128, so spread over as many
//             SMs as one wave allows.
//   M <= 128  {64x32, 64x64, 64x128, 64x192, 128x32, 128x64, 128x128, 128x192}: the same rule (64x32 gives
//             N=1024 64 CTAs, not 32); at N = 6144 64x128 ties 128x64 on 96 CTAs and, listed first, wins
//             (M = 72..128: 17.7-22.9 against 18.7-29.1 us, logs_h200/fba4dc7_gemm_sweep_m72_200.log).
//   M > 128   every tile: least waves x tile_clocks; ties go to the least padding past M and N, then to
//             more tiles, then to the first listed (M = 192 ran o-proj 4096 x 4096 on 128x64 in 27 us,
//             where 64x128 covers no padding: logs_h200/0d83a70_gemm_m192.log). On 132 SMs with K=4096
//             this fills the SMs in whole waves: M=256 runs N=1024 as 64x32 (128 CTAs, where 64x128 gave
//             32), N=4096 as 64x128 (128), N=6144 as 64x192 (128), N=12288 as 128x192 (128), N=24576 as
//             128x192 (256, two waves);
//             M=512 runs N=4096 as 128x128 (128) and N=6144 as 128x192 (128).
//   M > 256, N >= 6144: 64x128 instead of 128x192 where its tiles fit two waves (q|k|v, below).
//   128 < M <= 448, no bias, 16-bit out: a swapped tile instead where swap_pays (BIK_GEMM_SWAP).
//   256 < M <= 512, no bias, 16-bit out: a pair tile (192 weight rows) where it saves 8% of the work
//             (BIK_GEMM_PAIRS).
//   M > 448, no bias, 16-bit out: a wide swapped tile (128 weight rows) where it saves 8% of the work, or
//             none against 128x256 (BIK_GEMM_WIDE).
// The choice depends on (M, N, K, batch, SM count) only: it moves outputs between threads, never the K order.
// `plain` false: no pair or wide swapped tile, for the gated product, whose epilogue they cannot take (it
// would run as the two calls); its own swapped forms are glu_swap_rule's.
// The measures the rules below weigh tiles by, for one problem on one device.
struct TileRule {
  const Problem& p;
  const DeviceInfo& d;
  int64_t tiles_of(const TileShape& t) const {
    const int rows = t.swapped ? p.n : p.m, cols = t.swapped ? p.m : p.n;
    return int64_t((rows + t.bm - 1) / t.bm) * ((cols + t.bn - 1) / t.bn) * p.batch;
  }
  int64_t waves_of(const TileShape& t) const { return (tiles_of(t) + d.sms - 1) / d.sms; }
  // Area the tiles cover, padding past M and N included.
  int64_t area_of(const TileShape& t) const { return tiles_of(t) * t.bm * t.bn; }
  double waves(const TileShape& t) const { return double(waves_of(t)); }
  double clocks(const TileShape& t) const { return double(waves_of(t)) * tile_clocks(t, p.k); }
  // The least cost; among equal costs the least area when less_padding (M > 128), then the most tiles,
  // then the first listed.
  template <class Cost>
  Choice pick(std::initializer_list<Choice> cands, Cost cost, bool less_padding = false) const {
    const TileShape* best = nullptr;
    double best_cost = 0;
    for (Choice c : cands) {
      const TileShape* t = &kShapes[int(c)];
      const double cost_t = cost(*t);
      bool better = !best || cost_t < best_cost;
      if (best && cost_t == best_cost) {
        if (less_padding && area_of(*t) != area_of(*best)) better = area_of(*t) < area_of(*best);
        else better = tiles_of(*t) > tiles_of(*best);
      }
      if (better) best = t, best_cost = cost_t;
    }
    return best->c;
  }
};

Choice choose(const Problem& p, const DeviceInfo& d, bool plain = true) {
  const TileRule rule{p, d};
  auto tiles_of = [&](const TileShape& t) { return rule.tiles_of(t); };
  auto pick = [&](std::initializer_list<Choice> cands, auto cost, bool less_padding = false) {
    return rule.pick(cands, cost, less_padding);
  };
  auto waves = [&](const TileShape& t) { return rule.waves(t); };
  // Up to 128 rows: fewest waves, then most tiles. The 192-wide tiles fill one wave where 128-wide ones
  // need two (gate|up, N = 24576: on an H200 54 vs 63 us at M = 64, 61 vs 67 us at M = 128;
  // logs_h200x2/0907d85_gemm_sweep).
  // Up to 16 rows this rule once gave way to the widest tile with 32 tiles (fewer, wider tiles streamed
  // the weight faster, logs_h200x2/b907e7e_gemm_c0), while every stage's A box still ran 48-63 rows past
  // M. With boxes of M rows (gemm_kernel's load_stage) this rule's tiles are the fastest there too (H200,
  // M = 1..16: q|k|v on 64x64 15.6-16.2 us against 19.6-22.6 on 64x192, o-proj on 64x32 12.8-13.0 against
  // 14.9-17.1 on 64x128, down on 64x32 31.7-34.4 against 39.8-52.4 on 64x128; gate|up and the lm-head
  // keep 64x192; logs_h200/368dd8d_gemm_small_m_sweep.log).
  if (p.m <= 64) return pick({Choice::T64x32, Choice::T64x64, Choice::T64x128, Choice::T64x192}, waves);
  if (p.m <= 128)
    return pick({Choice::T64x32, Choice::T64x64, Choice::T64x128, Choice::T64x192, Choice::T128x32, Choice::T128x64,
                 Choice::T128x128, Choice::T128x192},
                waves);
  auto cost = [&](const TileShape& t) { return rule.clocks(t); };
  Choice c = pick({Choice::T64x32, Choice::T64x64, Choice::T64x128, Choice::T64x192, Choice::T128x32,
                   Choice::T128x64, Choice::T128x128, Choice::T128x192, Choice::T128x256},
                  cost, true);
  // Past 256 rows the one-wave 128x192 walk computes a third M-tile that is mostly padding, where 64x128
  // covers M in at most two waves; tile_clocks overrates the 64-row tile's operand time there. On an H200
  // q|k|v (6144 x 4096) at M = 264..312 took 28.8-29.1 us on 64x128 against 35.5-38.4; from M = 328 on,
  // three waves of it took 42.1-42.6 against 35.8-36.4 (logs_h200/6f3c476_gemm_m257_384_sweep.log).
  if (c == Choice::T128x192 && p.m > 256 && p.n >= 6144 && tiles_of(kShapes[int(Choice::T64x128)]) <= 2 * d.sms)
    c = Choice::T64x128;
  const SwapMode sw = swap_mode_for(p);
  if (sw == SwapMode::On || (sw == SwapMode::Auto && swap_pays(p, d))) c = swapped_choice(p.m);
  // A family's tile where its switch is On, or Auto and its work is at most `share` of the tile so far.
  auto family = [&](FamilyMode mode, Choice fc, double share) {
    if (fc != Choice::Count && (mode == FamilyMode::On || tile_work(p, d, fc) <= share * tile_work(p, d, c))) c = fc;
  };
  if (plain) {
    if (const FamilyMode pm = pair_mode_for(p); pm != FamilyMode::Off) family(pm, pair_choice(p, d), 0.92);
    if (const FamilyMode wm = wide_mode_for(p); wm != FamilyMode::Off)
      family(wm, wide_choice(p, d), c == Choice::T128x256 ? 1.0 : 0.92);
  }
  return c;
}

// Encodes a 16-bit operand map of `rank` dimensions (K first) in the 128-byte swizzle, unit element
// strides, zero fill past the extents; byte strides of dimensions 1.. in `strides`. False if the driver
// refuses it.
bool encode_sw128(CUtensorMap& map, const void* base, bool bf16, cuuint32_t rank, const cuuint64_t* dims,
                  const cuuint64_t* strides, const cuuint32_t* box) {
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUtensorMapDataType type = bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  return tensor_map_encoder("matmul")(&map, type, rank, const_cast<void*>(base), dims, strides, box, elem_strides,
                                      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                      CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The K offset between batches when a batched problem's batches are pieces of K: a [P, M, K/P] view of an
// [M, K] matrix for both operands alike (batch stride below the row stride, the P pieces within each row,
// K and the batch stride whole 64-deep K stages), the layout of a fixed K split into F32 partials
// (bik::bmm then bik::sum_partials). The copy engine reads such an operand through one two-dimensional map
// over the pieces' span of each row, the batch moving the K coordinate (gemm_kernel's load_stage); a
// three-dimensional map cannot describe batches that overlap in memory, and packing the operands costs
// more than the product. 0 otherwise. The loads are the same elements; no bit changes.
int64_t pieces_kofs(const Problem& p) {
  if (p.batch <= 1 || p.a_sb != p.w_sb || p.a_sb <= 0 || p.a_sb % kBK != 0 || p.k % kBK != 0) return 0;
  if (p.a_sk != 1 || p.w_sk != 1) return 0;
  const int64_t span = p.a_sb * (p.batch - 1) + p.k;
  if ((p.m > 1 && span > p.a_sm) || (p.n > 1 && span > p.w_sn) || span >= (int64_t(1) << 31)) return 0;
  return p.a_sb;
}

// A [batches, rows, K] view of a K-major operand, boxes of [1, box_rows, 64] in the 128-byte swizzle.
// Returns false when TMA cannot describe it (the kernel then loads with its producer warps). kofs > 0
// (pieces_kofs): one two-dimensional map over each row's span of the `batches` pieces instead.
bool make_map(CUtensorMap& map, const void* base, bool bf16, int k, int rows, int64_t s_row, int batches,
              int64_t s_batch, int box_rows, int64_t kofs = 0) {
  if (kofs > 0) {
    k = int(kofs * (batches - 1) + k);
    if (rows == 1) s_row = (int64_t(k) + 7) / 8 * 8;
    batches = 1;
  }
  if (k == 0 || !aligned16(base)) return false;
  // Strides of extent-1 dimensions are never used; give them any value the encoder accepts.
  const int64_t k_pad = (int64_t(k) + 7) / 8 * 8;
  if (rows == 1) s_row = k_pad;
  if (batches == 1) s_batch = s_row * rows;
  if (s_row % 8 != 0 || s_batch % 8 != 0 || s_row < k || s_batch <= 0) return false;
  const cuuint64_t dims[3] = {cuuint64_t(k), cuuint64_t(rows), cuuint64_t(batches)};
  const cuuint64_t strides[2] = {cuuint64_t(s_row * 2), cuuint64_t(s_batch * 2)};
  const cuuint32_t box[3] = {cuuint32_t(kBK), cuuint32_t(box_rows), 1};
  return encode_sw128(map, base, bf16, 3, dims, strides, box);
}

// Whether out rows take the staged 16-byte stores: unit N stride, 16-byte aligned base and row/batch steps.
bool out_vec16_of(const Problem& p) {
  const int64_t es = p.out_f32 ? 4 : 2;
  return p.o_sn == 1 && aligned16(p.out) && (p.m == 1 || (p.o_sm * es) % 16 == 0) &&
         (p.batch == 1 || (p.o_sb * es) % 16 == 0);
}

// The transposed product out^T[n, m] = sum_k w[n, k] a[m, k]: what a swapped tile's kernel computes.
Problem swapped(const Problem& p) {
  Problem q = p;
  q.a = p.w, q.w = p.a, q.m = p.n, q.n = p.m;
  q.a_sb = p.w_sb, q.a_sm = p.w_sn, q.a_sk = p.w_sk;
  q.w_sb = p.a_sb, q.w_sn = p.a_sm, q.w_sk = p.a_sk;
  q.o_sm = p.o_sn, q.o_sn = p.o_sm;
  q.out_pairs = false;
  return q;
}

// Whether a swapped tile's column epilogue (store_tile_columns) may write q, the transposed problem: a
// 16-bit output without a bias whose rows (q's columns) start 16-byte aligned, unit stride across them.
bool columns_vec16_of(const Problem& q) {
  return !q.out_f32 && q.bias == nullptr && q.o_sm == 1 && aligned16(q.out) && (q.n == 1 || (q.o_sn * 2) % 16 == 0) &&
         (q.batch == 1 || (q.o_sb * 2) % 16 == 0);
}

bool swap_applies(const Problem& p) { return p.k > 0 && columns_vec16_of(swapped(p)); }

// The kernel's parameters for a walk over `order`'s tiles (pairs of tiles in cluster mode): the problem,
// the tile count, which operands are batched and the output's store path.
Params walk_params(const Problem& p, const TileOrder& order) {
  Params prm{};
  prm.p = p;
  prm.order = order;
  const int64_t total = int64_t(order.count_per_batch()) * p.batch;
  BIK_CHECK(total < (int64_t(1) << 31), "matmul: too many tiles");
  prm.total_tiles = int(total);
  prm.a_batched = p.batch > 1 && p.a_sb != 0;
  prm.w_batched = p.batch > 1 && p.w_sb != 0;
  prm.a_kofs = prm.w_kofs = int(pieces_kofs(p));
  prm.out_vec16 = out_vec16_of(p);
  return prm;
}

// ---- cluster mode (gemm_sm90.cuh): pairs of CTAs share one operand through TMA multicast ----------------
// BIK_GEMM_CLUSTER, read at each call so tests and benchmarks can flip it between calls:
//   unset -> clusters of two (the shared operand picked per shape, share_w_for) for decode-sized products
//            with few output columns and a long K (M <= 128, N <= 4096, K >= 8192, one batch): on an H200 the
//            down projection 4096 x 12288 at M = 1..128 took 36.6-43.5 us against 40.2-47.2 on one CTA a
//            tile, 47.1 against 47.5 at M = 256; with K = 4096 the pairs gained nothing reliable (4096 x 4096
//            0.4 us faster at M <= 128, 0.9 us slower at 256; logs_h200/146edda_gemm_rule_*.log). Not at
//            128 < M <= 256, where one CTA a tile ran M = 136..224 in 40.4-44.1 us against 43.0-56.5 for the
//            pairs and equal at 240..256 (logs_h200/8a94bb8_gemm_down_rules.log); and for two
//            full M-tiles of 128 rows over many output columns (M = 256, N >= 16384, K >= 4096, one batch:
//            a full batch's decode step), where the pair shares W: gate|up 24576 x 4096 took 76.8 / 81.5 us
//            against 89.6 / 91.4 on one CTA a tile, while q|k|v (N = 6144) lost 1-7 us
//            (logs_h200/5e5800c_gemm_cluster_ab.log). Not for 128 < M < 256: the pair's 128-row tiles then
//            compute 256 rows, and in serving gate|up at M = 144 took 87.8 us a layer on them against 54.7
//            for cuBLAS (logs_h200/b44b12b_ncu_serve_*_70000.csv.xz), where the ping-pong form's 64-row
//            tiles did M = 160 in 66 (logs_h200/cdfe3d1_gemm_pingpong_m.log). One CTA per tile otherwise;
//   "0" -> one CTA per tile everywhere; "2" -> clusters of two everywhere; "2a" / "2w" -> clusters of two
//   that always share A / W (for A/B timing and the tests); anything else -> as unset.
// It never changes a bit: the K order, the wgmma sequence and the epilogue of every stored output are the same.
enum class ClusterMode { Off, Auto, ShareA, ShareW };
ClusterMode cluster_mode_for(const Problem& p) {
  if (const auto forced = env_switch<ClusterMode>("BIK_GEMM_CLUSTER", {{"0", ClusterMode::Off},
                                                                        {"2", ClusterMode::Auto},
                                                                        {"2a", ClusterMode::ShareA},
                                                                        {"2w", ClusterMode::ShareW}}))
    return *forced;
  const bool long_k = p.m <= 128 && p.n <= 4096 && p.k >= 8192;
  const bool wide_n = p.m == 256 && p.n >= 16384 && p.k >= 4096;
  return (long_k || wide_n) && p.batch == 1 ? ClusterMode::Auto : ClusterMode::Off;
}

std::atomic<uint64_t> g_cluster_launches{0};

// BIK_GEMM_PINGPONG: "1" -> every tile with two consumer warpgroups (128 x BN) runs its ping-pong form
// (gemm_sm90.cuh), the two consumers on alternate 64 x BN tiles, taking turns at the tensor cores; "0" ->
// never; unset or anything else -> the 128x192 tile for N >= 6144 when M is not a multiple of 128, and
// the 128x256 tile there for M < 256 (M <= 192 with an f32 output). On an H200 that form ran gate|up
// (N = 24576) at 66-500 us against 92-531 for M = 160..1600 and q|k|v (N = 6144) at M = 2112 in 155-169
// against 204-205 us, within 3% elsewhere; other tiles and N = 4096 lost or tied
// (logs_h200/cdfe3d1_gemm_pingpong_m.log); the 8B model's lm-head (151936 x 4096) on 128x256 tiles at
// M = 144 / 160 / 200 took 408 / 420 / 567 us against 489 / 492 / 688 (logs_h200/ad73d5d_gemm_pingpong_small_m.log);
// with f32 outputs (the engine's logits) only up to M = 192, where the 64-row tiles compute fewer rows:
// sustained, 454-462 us at M = 144..192 against 522-530, but 554-559 at M = 200..240 against 528-533
// (logs_h200/d482132_lmhead_f32_pp.log, d482132_lmhead_f32_modes.log); at M = 256, the decode steps of a
// full batch, gate|up took 84.4 us a layer in serving against 76.7 without it
// (logs_h200/0d83a70_ncu_serve_on.csv.xz, d79050f_ncu_serve_on.csv.xz). Read at each call, as
// BIK_GEMM_CLUSTER; where the cluster launch applies, it goes first. It never changes a bit: every 64-row
// slab gets the same wgmma sequence and epilogue either way.
bool pingpong_for(const Problem& p, int bn) {
  const char* e = std::getenv("BIK_GEMM_PINGPONG");
  if (e != nullptr && e[0] == '1') return true;
  if (e != nullptr && e[0] == '0') return false;
  return p.n >= 6144 && p.m % 128 != 0 && (bn == 192 || (bn == 256 && p.m < (p.out_f32 ? 193 : 256)));
}

std::atomic<uint64_t> g_pingpong_launches{0};

// Auto: the sharing that moves fewer operand rows from L2 over the whole launch, counting the partner
// that copies (and discards) a tile past M or N when the tile count along the pairing is odd. Per CTA and
// stage, sharing W copies BM + BN / 2 rows, sharing A BM / 2 + BN. Decode (one M-tile) always shares A;
// M = 256 with 128x192 tiles shares W.
bool share_w_for(const Problem& p, int bm, int bn, ClusterMode mode) {
  if (mode == ClusterMode::ShareA) return false;
  if (mode == ClusterMode::ShareW) return true;
  const int64_t tm = (p.m + bm - 1) / bm, tn = (p.n + bn - 1) / bn;
  const int64_t rows_w = 2 * ((tm + 1) / 2) * tn * (2 * bm + bn);  // twice the rows, to stay in integers
  const int64_t rows_a = tm * 2 * ((tn + 1) / 2) * (bm + 2 * bn);
  return rows_w <= rows_a;
}

// A launch of `ctas` CTAs (even) in clusters of two along x, programmatic (launch.cuh) if asked; `attr`
// holds the attributes the returned configuration points at, so it must outlive every use of it.
cudaLaunchConfig_t pair_cluster_config(cudaLaunchAttribute (&attr)[2], unsigned ctas, int threads, int smem,
                                       cudaStream_t st, bool programmatic = false) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(ctas, 1, 1);
  cfg.blockDim = dim3(unsigned(threads), 1, 1);
  cfg.dynamicSmemBytes = size_t(smem);
  cfg.stream = st;
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 2;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  attr[1] = programmatic_attribute();
  cfg.attrs = attr;
  cfg.numAttrs = programmatic ? 2 : 1;
  return cfg;
}

// How many clusters of two CTAs of this kernel the device holds at once (GPCs with an odd number of free
// SMs leave one idle), cached per (kernel, device); 0 when clusters cannot be placed.
int max_active_pairs(const void* kernel, int threads, int smem, const DeviceInfo& d) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, int> cache;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(kernel, d.index);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  cudaLaunchAttribute attr[2];
  const cudaLaunchConfig_t cfg =
      pair_cluster_config(attr, unsigned(std::max(2, d.sms / 2 * 2)), threads, smem, nullptr);
  int n = 0;
  if (cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) != cudaSuccess) {
    (void)cudaGetLastError();
    n = 0;
  }
  n = std::min(n, d.sms / 2);
  cache[key] = n;
  return n;
}

// Launches `kernel` in clusters of two: min(pairs, most) pairs of CTAs (`most`: max_active_pairs), each
// pair walking prm's pairs of tiles; programmatic where the kernel allows it; counted as a cluster launch.
void launch_pairs(sm90::GemmKernelFn kernel, int threads, int smem, int64_t pairs, int most, cudaStream_t st,
                  const Params& prm, const CUtensorMap& map_a, const CUtensorMap& map_w) {
  cudaLaunchAttribute attr[2];
  const bool programmatic = programmatic_launch(reinterpret_cast<const void*>(kernel));
  const cudaLaunchConfig_t cfg =
      pair_cluster_config(attr, unsigned(2 * std::min<int64_t>(pairs, most)), threads, smem, st, programmatic);
  BIK_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, prm, map_a, map_w));
  if (programmatic) count_programmatic_launch();
  g_cluster_launches.fetch_add(1, std::memory_order_relaxed);
}

// BIK_GEMM_CLUSTER_INSIDE, read at each call: unset or anything but "0" -> cluster launches keep the last
// M-tile's A box inside the matrix as one CTA a tile does (gemm_kernel's m_base: the box starts at M - BM,
// rows of the tile before computed again with the same bits); "0" -> the box starts at row tm x BM and
// overhangs M. On an H200 the down projection at M = 72 on clusters sharing W took 44.5-45.3 us under
// sustained load against 51.1-52.5 with the overhanging box, equal at M = 100 / 120 (45.0-46.3; both
// orders of the runs: logs_h200/171eadb_down_inside*). It never changes a bit.
bool cluster_inside() { return env_switch<bool>("BIK_GEMM_CLUSTER_INSIDE", {{"0", false}}).value_or(true); }

// The cluster launch of tile Cfg. Returns false (nothing launched) where it does not apply: an operand
// the copy engine cannot describe (the one-CTA kernel then loads with its producer warps), K = 0, no tiles,
// or a device that cannot place a cluster of two such CTAs.
template <class Cfg, typename T>
bool launch_cluster(const Problem& p, const DeviceInfo& d, cudaStream_t st, ClusterMode mode) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN;
  if (p.a_sk != 1 || p.w_sk != 1 || p.k == 0 || p.m == 0 || p.n == 0 || p.batch == 0) return false;
  auto kernel = gemm_kernel<Cfg, T, true>;
  const bool share_w = share_w_for(p, BM, BN, mode);
  const int tiles_m = (p.m + BM - 1) / BM, tiles_n = (p.n + BN - 1) / BN;
  // Pairs walk in bands that keep the one-CTA walk's band of 8 M-tiles over each W tile.
  Params prm =
      walk_params(p, share_w ? TileOrder{(tiles_m + 1) / 2, tiles_n, 4} : TileOrder{tiles_m, (tiles_n + 1) / 2, 8});
  prm.share_w = share_w ? 1 : 0;
  prm.m_inside = cluster_inside();
  const int64_t pairs = prm.total_tiles;
  const bool a_batched = prm.a_batched, w_batched = prm.w_batched;
  prm.tma = 1;
  constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  // The shared operand's map copies half a tile: each CTA of the pair copies one half for both. A gated
  // product's W boxes are halves either way (its gate and up rows).
  CUtensorMap map_a{}, map_w{};
  // Sharing A with no more rows than half a tile (decode), each CTA multicasts all of them (gemm_kernel's
  // load_stage): a box of M rows, not two half-tile boxes mostly past M; a stage then receives them twice.
  prm.a_small = !prm.share_w && p.m <= BM / 2;
  prm.stage_tx = prm.a_small ? (2 * p.m + BN) * kRowBytes : Cfg::kStageBytes;
  if (!make_map(map_a, p.a, bf16, p.k, p.m, p.a_sm, a_batched ? p.batch : 1, p.a_sb,
                prm.a_small ? p.m : prm.share_w ? BM : BM / 2, prm.a_kofs) ||
      !make_map(map_w, p.w, bf16, p.k, p.n, p.w_sn, w_batched ? p.batch : 1, p.w_sb,
                prm.share_w || p.glu ? BN / 2 : BN, prm.w_kofs))
    return false;
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), d.index, Cfg::kSmemBytes);
  const int most = max_active_pairs(reinterpret_cast<const void*>(kernel), Cfg::kThreads, Cfg::kSmemBytes, d);
  if (most < 1) return false;
  launch_pairs(kernel, Cfg::kThreads, Cfg::kSmemBytes, pairs, most, st, prm, map_a, map_w);
  return true;
}

// ---- split tiles (experimental: gemm_sm90_tile by name, bik bench gemm --tiles; never the rule) ----------
// A pair of CTAs in a cluster on each output tile, over the two pieces of K: [0, split_len) and the rest
// (gemm_kernel's kSplit). The bits are those of the pieces as two products summed by sum_partials (piece 0 +
// piece 1, then the bias, one rounding), not the unsplit tiles': a K split that the library's plans would
// have to take for every M of a shape (policy::gemm_plan) to keep rows batch-invariant.
using SplitTile64x64 = Config<64, 64, 12>;
using SplitTile64x128 = Config<64, 128, 8>;
using SplitTile128x128 = Config<128, 128, 5>;  // five stages leave room for the exchange buffer

std::atomic<uint64_t> g_split_launches{0};

// Cfg in split mode with K pieces of split_len (a positive multiple of 64, less than K). The operands must
// be ones the copy engine describes (gemm_sm90_tile packs the others) and out rows 16-byte aligned.
template <class Cfg, typename T>
void launch_split(const Problem& p, const DeviceInfo& d, cudaStream_t st, int split_len) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, kSmem = split_smem_bytes<Cfg>();
  BIK_CHECK(split_len > 0 && split_len % kBK == 0 && split_len < p.k, "gemm_sm90 split tile: split length ",
            split_len, " must be a positive multiple of ", kBK, " below K = ", p.k);
  BIK_CHECK(p.batch == 1 && p.a_sk == 1 && p.w_sk == 1 && p.m > 0 && p.n > 0 && out_vec16_of(p),
            "gemm_sm90 split tile: needs one batch, unit K strides and 16-byte aligned output rows");
  BIK_CHECK(kSmem <= d.smem_optin, "gemm_sm90 split tile needs ", kSmem, " bytes of shared memory; the device allows ",
            d.smem_optin);
  auto kernel = gemm_kernel<Cfg, T, false, 0, true>;
  Params prm = walk_params(p, TileOrder{(p.m + BM - 1) / BM, (p.n + BN - 1) / BN, 8});
  prm.tma = 1;
  prm.split_kb = split_len / kBK;
  constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  const int a_box = std::min(p.m, BM), w_box = std::min(p.n, BN);
  prm.stage_tx = (a_box + w_box) * kRowBytes;
  CUtensorMap map_a{}, map_w{};
  BIK_CHECK(make_map(map_a, p.a, bf16, p.k, p.m, p.a_sm, 1, 0, a_box) &&
                make_map(map_w, p.w, bf16, p.k, p.n, p.w_sn, 1, 0, w_box),
            "gemm_sm90 split tile: the copy engine cannot describe the operands");
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), d.index, kSmem);
  const int most = max_active_pairs(reinterpret_cast<const void*>(kernel), Cfg::kThreads, kSmem, d);
  BIK_CHECK(most >= 1, "gemm_sm90 split tile: the device cannot place a cluster of two such CTAs");
  launch_pairs(kernel, Cfg::kThreads, kSmem, prm.total_tiles, most, st, prm, map_a, map_w);
  g_split_launches.fetch_add(1, std::memory_order_relaxed);
}

// The one-CTA-a-tile launch of `kernel`, a bm x bn tile (swapped: bm weight rows by bn activation rows of
// p, the transposed problem; persistent: at most one CTA an SM), walking bands of `group` M-tiles.
// heads_epilogue: the q|k|v epilogue (gemm_heads.cuh) with `heads` as its arguments, launched only where the
// copy engine describes both operands (false, nothing launched, otherwise: the caller runs the calls).
bool launch_one_cta_fn(sm90::GemmKernelFn kernel, int threads, int smem, int bm, int bn, bool swapped_tile,
                       bool heads_epilogue, const Problem& p, const DeviceInfo& d, cudaStream_t st, int group,
                       const HeadsEpilogue* heads, bool bf16) {
  BIK_CHECK(smem <= d.smem_optin, "matmul: sm90 tile needs ", smem, " bytes of shared memory; the device allows ",
            d.smem_optin);
  Params prm = walk_params(p, TileOrder{(p.m + bm - 1) / bm, (p.n + bn - 1) / bn, group});
  if (heads != nullptr) prm.heads = *heads;
  if (swapped_tile) prm.out_vec16 = columns_vec16_of(p);
  const int64_t total = prm.total_tiles;
  const bool a_batched = prm.a_batched, w_batched = prm.w_batched;
  CUtensorMap map_a{}, map_w{};
  // Boxes of at most the operand's rows (load_stage): a decode's few rows, not BM rows mostly past M.
  const int a_box = std::min(p.m, bm), w_box = p.glu ? bn / 2 : std::min(p.n, bn);
  prm.stage_tx = (a_box + (p.glu ? bn : w_box)) * kRowBytes;
  prm.tma = p.a_sk == 1 && p.w_sk == 1 &&
            make_map(map_a, p.a, bf16, p.k, p.m, p.a_sm, a_batched ? p.batch : 1, p.a_sb, a_box, prm.a_kofs) &&
            make_map(map_w, p.w, bf16, p.k, p.n, p.w_sn, w_batched ? p.batch : 1, p.w_sb, w_box, prm.w_kofs);
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), d.index, smem);
  if (heads_epilogue && !prm.tma) return false;
  const int grid = int(std::min<int64_t>(total, d.sms));
  launch_kernel(kernel, unsigned(grid), threads, smem, st, prm, map_a, map_w);
  BIK_CUDA_LAUNCH_CHECK();
  return true;
}

// launch_one_cta_fn for Cfg's kernel; kHeadDim > 0: the q|k|v heads epilogue.
template <class Cfg, typename T, int kHeadDim = 0>
bool launch_one_cta(const Problem& p, const DeviceInfo& d, cudaStream_t st, int group,
                    const HeadsEpilogue* heads = nullptr) {
  return launch_one_cta_fn(gemm_kernel<Cfg, T, false, kHeadDim>, Cfg::kThreads, Cfg::kSmemBytes, Cfg::BM, Cfg::BN,
                           Cfg::kSwapped, kHeadDim > 0, p, d, st, group, heads, std::is_same_v<T, __nv_bfloat16>);
}

template <class Cfg, typename T>
void launch(const Problem& p, const DeviceInfo& d, cudaStream_t st) {
  BIK_CHECK(Cfg::kSmemBytes <= d.smem_optin, "matmul: sm90 tile needs ", Cfg::kSmemBytes,
            " bytes of shared memory; the device allows ", d.smem_optin);
  if (const ClusterMode mode = cluster_mode_for(p); mode != ClusterMode::Off && launch_cluster<Cfg, T>(p, d, st, mode))
    return;
  if constexpr (Cfg::kConsumers == 2) {
    if (pingpong_for(p, Cfg::BN)) {
      // Bands of 16 64-row tiles: the rows of the default walk's bands of 8 128-row tiles.
      launch_one_cta<PingPongOf<Cfg>, T>(p, d, st, 16);
      g_pingpong_launches.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
  launch_one_cta<Cfg, T>(p, d, st, 8);
}

std::atomic<uint64_t> g_swapped_launches{0};
std::atomic<uint64_t> g_gated_launches{0};

// A swapped tile: the transposed problem on SwapTile<BN> (bands of 16 weight tiles, as the ping-pong walk).
template <int BN, typename T>
void launch_swapped(const Problem& p, const DeviceInfo& d, cudaStream_t st) {
  BIK_CHECK(p.bias == nullptr, "matmul: a swapped sm90 tile takes no bias (its rows are output columns)");
  launch_one_cta<SwapTile<BN>, T>(swapped(p), d, st, 16);
  g_swapped_launches.fetch_add(1, std::memory_order_relaxed);
}

std::atomic<uint64_t> g_pair_launches{0};

// A plain swapped tile of 192 weight rows by `bn` activation rows (sm90::swap_pair_kernel) in pairs of CTAs
// that share the weight tile: the transposed problem's column tiles 2j and 2j + 1 (the second one past M
// when M needs an odd number, computed on copied rows and not stored), each CTA multicasting half of the
// weight box. Where the copy engine cannot describe an operand (no scratch for packing), K = 0, more than
// one batch, or the device cannot place the pairs, the default 128x128 tile runs instead: the same bits.
// The kernel `lookup` (sm90::swap_pair_kernel, swap_wide_kernel) gives for `bn` activation rows, an error
// where there is none, or where p has a bias (a swapped tile's rows are output columns).
sm90::SwapWideKernel wide_kernel_for(const Problem& p, sm90::SwapWideKernel (*lookup)(int, bool), bool bf16, int bn,
                                     const char* what) {
  BIK_CHECK(p.bias == nullptr, "matmul: a swapped sm90 tile takes no bias (its rows are output columns)");
  const sm90::SwapWideKernel kr = lookup(bn, bf16);
  BIK_CHECK(kr.fn != nullptr, "gemm_sm90: no ", what, " of ", bn, " columns");
  return kr;
}

template <typename T>
void launch_swap_pairs(const Problem& p, const DeviceInfo& d, cudaStream_t st, int bn) {
  constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  const sm90::SwapWideKernel kr = wide_kernel_for(p, sm90::swap_pair_kernel, bf16, bn, "pair tile");
  const Problem q = swapped(p);
  const int w_box = std::min(q.n, kr.bn);
  CUtensorMap map_a{}, map_w{};
  const void* fn = reinterpret_cast<const void*>(kr.fn);
  const bool ok = q.a_sk == 1 && q.w_sk == 1 && q.k > 0 && q.m > 0 && q.n > 0 && q.batch == 1 &&
                  make_map(map_a, q.a, bf16, q.k, q.m, q.a_sm, 1, 0, kr.bm / 2) &&
                  make_map(map_w, q.w, bf16, q.k, q.n, q.w_sn, 1, 0, w_box) && kr.smem <= d.smem_optin;
  if (ok) allow_dynamic_smem(fn, d.index, kr.smem);
  const int most = ok ? max_active_pairs(fn, kr.threads, kr.smem, d) : 0;
  if (most < 1) return launch<Tile128x128, T>(p, d, st);
  const int tiles_m = (q.m + kr.bm - 1) / kr.bm, tiles_n = (q.n + kr.bn - 1) / kr.bn;
  Params prm = walk_params(q, TileOrder{tiles_m, (tiles_n + 1) / 2, 8});
  prm.tma = 1;
  prm.share_w = 0;
  prm.out_vec16 = columns_vec16_of(q);
  prm.stage_tx = (kr.bm + w_box) * kRowBytes;
  launch_pairs(kr.fn, kr.threads, kr.smem, prm.total_tiles, most, st, prm, map_a, map_w);
  g_pair_launches.fetch_add(1, std::memory_order_relaxed);
}

// A wide swapped tile: the transposed problem on 128 weight rows by `bn` activation rows
// (sm90::swap_wide_kernel), one CTA a tile, bands of 8 weight tiles.
template <typename T>
void launch_wide(const Problem& p, const DeviceInfo& d, cudaStream_t st, int bn) {
  constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  const sm90::SwapWideKernel kr = wide_kernel_for(p, sm90::swap_wide_kernel, bf16, bn, "wide swapped tile");
  launch_one_cta_fn(kr.fn, kr.threads, kr.smem, kr.bm, kr.bn, true, false, swapped(p), d, st, 8, nullptr, bf16);
  g_swapped_launches.fetch_add(1, std::memory_order_relaxed);
}

template <typename T>
void run_tile(Choice c, const Problem& p, const DeviceInfo& d, cudaStream_t st) {
  if (int(c) >= int(Choice::P64)) return launch_swap_pairs<T>(p, d, st, kShapes[int(c)].bn);
  if (int(c) >= int(Choice::W112)) return launch_wide<T>(p, d, st, kShapes[int(c)].bn);
  switch (c) {
    case Choice::S144: return launch_swapped<144, T>(p, d, st);
    case Choice::S160: return launch_swapped<160, T>(p, d, st);
    case Choice::S192: return launch_swapped<192, T>(p, d, st);
    case Choice::S208: return launch_swapped<208, T>(p, d, st);
    case Choice::S224: return launch_swapped<224, T>(p, d, st);
    case Choice::S256: return launch_swapped<256, T>(p, d, st);
    case Choice::T64x32: return launch<Tile64x32, T>(p, d, st);
    case Choice::T64x64: return launch<Tile64x64, T>(p, d, st);
    case Choice::T64x128: return launch<Tile64x128, T>(p, d, st);
    case Choice::T64x192: return launch<Tile64x192, T>(p, d, st);
    case Choice::T128x32: return launch<Tile128x32, T>(p, d, st);
    case Choice::T128x64: return launch<Tile128x64, T>(p, d, st);
    case Choice::T128x128: return launch<Tile128x128, T>(p, d, st);
    case Choice::T128x192: return launch<Tile128x192, T>(p, d, st);
    case Choice::T128x256: return launch<Tile128x256, T>(p, d, st);
    default: break;
  }
  throw Error("gemm_sm90: no such tile");
}

// f(T{}) for the element type of the 16-bit inputs the wgmma kernels take; an error for any other dtype.
template <class F>
void on_half_dtype(DType dt, F&& f) {
  if (dt == DType::BF16)
    f(__nv_bfloat16{});
  else if (dt == DType::F16)
    f(__half{});
  else
    throw Error(detail::concat("gemm_sm90: inputs must be f16 or bf16, got ", dtype_name(dt)));
}

void run_any(Choice c, const GemmArgs& g, const Problem& p, const DeviceInfo& d, cudaStream_t st) {
  on_half_dtype(g.a.dtype, [&](auto t) { run_tile<decltype(t)>(c, p, d, st); });
}

// Copies a K-major operand [batches, rows, K] (any strides) into a packed buffer whose rows are padded with
// zeros to Kp = K rounded up to 8 elements (16 bytes), which the copy engine can describe. The kernel reads
// zeros past K either way, so the tiles in shared memory, and the sums, are the same bits.
template <typename T>
__global__ void pack_rows_kernel(T* dst, const T* src, int batches, int rows, int k, int kp, int64_t s_b, int64_t s_r,
                                 int64_t s_k) {
  const int64_t total_rows = int64_t(batches) * rows;
  for (int64_t br = blockIdx.y; br < total_rows; br += gridDim.y) {
    const int64_t b = br / rows, r = br - b * rows;
    const T* in = src + b * s_b + r * s_r;
    T* out = dst + br * kp;
    for (int kk = blockIdx.x * blockDim.x + threadIdx.x; kk < kp; kk += gridDim.x * blockDim.x)
      out[kk] = kk < k ? in[int64_t(kk) * s_k] : from_f32<T>(0.f);
  }
}

bool operand_tma_ok(const void* base, int64_t sk, int k, int rows, int64_t s_row, int batches, int64_t s_batch,
                    int64_t kofs) {
  CUtensorMap m{};
  return sk == 1 && make_map(m, base, true, k, rows, s_row, batches, s_batch, 64, kofs);
}

// Where an operand's layout defeats the copy engine, packs it into stream-ordered scratch memory and points
// the problem at the copy. Returns the buffers to free after the launch.
std::vector<void*> pack_for_tma(Problem& p, bool bf16, cudaStream_t st) {
  std::vector<void*> bufs;
  const int kp = (p.k + 7) / 8 * 8;
  // Pieces of K stay in place only if both operands do (the kernel moves one K coordinate for both).
  const int64_t kofs = pieces_kofs(p);
  if (kofs > 0 && operand_tma_ok(p.a, p.a_sk, p.k, p.m, p.a_sm, p.batch, p.a_sb, kofs) &&
      operand_tma_ok(p.w, p.w_sk, p.k, p.n, p.w_sn, p.batch, p.w_sb, kofs))
    return bufs;
  auto pack = [&](const void*& base, int64_t& sb, int64_t& sr, int64_t& sk, int rows) {
    const int batches = p.batch > 1 && sb != 0 ? p.batch : 1;
    if (operand_tma_ok(base, sk, p.k, rows, sr, batches, sb, 0)) return;
    const int64_t elems = int64_t(batches) * rows * kp;
    void* buf = nullptr;
    if (cudaMallocAsync(&buf, size_t(elems) * 2, st) != cudaSuccess) {
      cudaGetLastError();  // no scratch memory: the kernel's own element-wise loads still work
      return;
    }
    bufs.push_back(buf);
    const dim3 blocks(std::min((kp + 1023) / 1024, 8), unsigned(std::min<int64_t>(int64_t(batches) * rows, 65535)));
    if (bf16)
      pack_rows_kernel<__nv_bfloat16><<<blocks, 256, 0, st>>>(static_cast<__nv_bfloat16*>(buf),
                                                              static_cast<const __nv_bfloat16*>(base), batches, rows,
                                                              p.k, kp, sb, sr, sk);
    else
      pack_rows_kernel<__half><<<blocks, 256, 0, st>>>(static_cast<__half*>(buf), static_cast<const __half*>(base),
                                                       batches, rows, p.k, kp, sb, sr, sk);
    BIK_CUDA_LAUNCH_CHECK();
    base = buf;
    sk = 1;
    sr = kp;
    sb = batches > 1 ? int64_t(rows) * kp : 0;
  };
  if (p.k > 0) {
    pack(p.a, p.a_sb, p.a_sm, p.a_sk, p.m);
    pack(p.w, p.w_sb, p.w_sn, p.w_sk, p.n);
  }
  return bufs;
}

// run(p) with the operands the copy engine cannot describe packed into scratch copies, freed behind it.
template <class F>
void with_packed(Problem p, bool bf16, cudaStream_t st, F&& run) {
  const std::vector<void*> bufs = pack_for_tma(p, bf16, st);
  run(static_cast<const Problem&>(p));
  for (void* b : bufs) BIK_CUDA_CHECK(cudaFreeAsync(b, st));
}

void run_packed(Choice c, const GemmArgs& g, const Problem& p, const DeviceInfo& d, cudaStream_t st) {
  with_packed(p, g.a.dtype == DType::BF16, st, [&](const Problem& q) { run_any(c, g, q, d, st); });
}

bool tma_possible(const Problem& p) {
  CUtensorMap m{};
  const int64_t kofs = pieces_kofs(p);
  return p.a_sk == 1 && p.w_sk == 1 &&
         make_map(m, p.a, true, p.k, p.m, p.a_sm, p.batch > 1 && p.a_sb ? p.batch : 1, p.a_sb, 64, kofs) &&
         make_map(m, p.w, true, p.k, p.n, p.w_sn, p.batch > 1 && p.w_sb ? p.batch : 1, p.w_sb, 32, kofs);
}

// ---- gated swapped tiles (Config::kSwapGlu, gemm_sm90_swap_wide.cu) -----------------------------------
// The gated product as out^T = w a^T on tiles of 128 weight rows (gate and up rows of 64 outputs,
// interleaved by the tensor map below) by BN activation rows. Where the default tiles would round M up
// (two or three 128-row M-tiles, or 64-row ping-pong tiles over M = 257..384 at 5-6 waves), the
// activation rows are split into one or two column tiles of just the rows M needs, with the activation in
// the epilogue (the plain swapped tiles cannot take it: their threads hold one of the two sums).
// BIK_GEMM_GLU_SWAP, read at each call: "0" -> never; "1" -> one column tile of M rows (M <= 256); "2" ->
// two column tiles of ceil(M / 2) rows, one CTA a tile; "2c" -> the same in clusters of two that share
// the weight tile (each CTA multicasts half of it); "2c192" -> the same on tiles of 192 weight rows (three
// consumer warpgroups); unset or anything else -> glu_swap_rule. Either way
// each output is the same K sum of one wgmma per K step from zero accumulators, both sums rounded as the
// plain product rounds them, then silu_mul rounded once: the bits of the default tiles.
enum class GluSwap { Off, One, Two, TwoCluster, TwoCluster192 };

// The weight rows of a gated swapped tile in `mode`.
int glu_swap_bm(GluSwap mode) { return mode == GluSwap::TwoCluster192 ? 192 : 128; }

// The rule, by the least work (walk_work): the default tiles, one column tile (M <= 256), two in pairs
// sharing the weight (M > 208) on tiles of 128 or (ceil(M / 2) <= 192, 192 dividing 2 d) 192 weight rows.
// The 192-row pairs win ties with the default tiles; the others must save at least 5% against default
// tiles that fuse the activation, and win ties against a plain swapped default tile (the product, then
// silu_and_mul as a second kernel). Ping-pong tiles count as their 64-row halves. On an H200 (K = 4096,
// bik bench gemm --gated --sweep): gate|up (2 d = 24576) on the 192-row pairs at M = 216..384 took
// 83.9-135.8 us, at M = 264..384 5-10% less than the default tiles at equal or less work (264: 104.2
// against 117.6; 296: 115.6 against 124.8; 360: 135.8 against 146.5) and 3-6% less than the 128-row pairs
// (logs_h200/886c3a0_gemm_gated_sweep.log), within 2% of them and of the default at 232..256; the
// 128-row pairs at M = 416 / 448 (past the 192-row tiles' 384) 148.0 / 155.8 against 172.5 / 160.1
// (logs_h200/48e9e1b_gemm_gated_sweep.log); a d = 6144 gate|up on one column tile at M = 129..176
// 34.1-39.7 against 44.4-48.2 (the plain swapped tile and the second kernel, equal work). Ties against
// fused default tiles went either way within 5% for the 128-row tiles (M = 232..256, 296..312, 360..384).
// Two column tiles of 112 rows lost at M = 200 (110.5 against 87.0), hence M > 208 for the pairs. Measured
// with K = 4096 only: K < 2048 (short tiles, where the epilogue weighs more) keeps the default.
// c: the tile the default path takes for p (choose(p, d, false)).
GluSwap glu_swap_rule(const Problem& p, const DeviceInfo& d, Choice c) {
  if (p.batch != 1 || p.k < 2048 || p.n % 128 != 0 || p.m > 512 || d.sms < 2) return GluSwap::Off;
  const TileShape& t = kShapes[int(c)];
  const double base = tile_work(p, d, c);
  const bool fused = !t.swapped && t.bn % 64 == 0;  // what gemm_sm90_gated takes
  const bool bf16 = true;  // the tile widths do not depend on the dtype
  auto work = [&](int tile_rows, int rows_a_tile, bool pairs) {
    const sm90::SwapWideKernel k = sm90::glu_swap_kernel(tile_rows, rows_a_tile, bf16, pairs);
    return k.fn == nullptr ? 1e300 : walk_work(p.n / tile_rows, pairs ? d.sms / 2 : d.sms, tile_rows, k.bn);
  };
  const int half = (p.m + 1) / 2;
  if (p.m > 208 && p.n % 192 == 0 && work(192, half, true) <= base) return GluSwap::TwoCluster192;
  const double one = p.m <= 256 ? work(128, p.m, false) : 1e300;
  const double two = p.m > 208 ? work(128, half, true) : 1e300;
  const double best = std::min(one, two);
  if (fused ? best > 0.95 * base : best > base) return GluSwap::Off;
  return one <= two ? GluSwap::One : GluSwap::TwoCluster;
}

GluSwap glu_swap_for(const Problem& p, const DeviceInfo& d, Choice c) {
  if (const auto forced =
          env_switch<GluSwap>("BIK_GEMM_GLU_SWAP", {{"0", GluSwap::Off}, {"1", GluSwap::One}, {"2", GluSwap::Two},
                                                    {"2c", GluSwap::TwoCluster}, {"2c192", GluSwap::TwoCluster192}}))
    return *forced;
  return glu_swap_rule(p, d, c);
}

// The weight [gate rows; up rows] (2 d rows of K, s_row apart) as four dimensions (K, 8 rows, gate / up,
// d / 8 groups of 8 outputs), boxes of (64, 8, 2, box_groups) in the 128-byte swizzle: a box lands as
// box_groups groups of 16 rows, 8 gate rows then the up rows of the same 8 outputs.
bool make_glu_map(CUtensorMap& map, const void* base, bool bf16, int k, int d, int64_t s_row, int box_groups) {
  if (k == 0 || !aligned16(base) || d % 8 != 0 || s_row % 8 != 0 || s_row < k) return false;
  const cuuint64_t dims[4] = {cuuint64_t(k), 8, 2, cuuint64_t(d / 8)};
  const cuuint64_t strides[3] = {cuuint64_t(s_row * 2), cuuint64_t(int64_t(d) * s_row * 2), cuuint64_t(8 * s_row * 2)};
  const cuuint32_t box[4] = {cuuint32_t(kBK), 8, 2, cuuint32_t(box_groups)};
  return encode_sw128(map, base, bf16, 4, dims, strides, box);
}

std::atomic<uint64_t> g_glu_swap_launches{0};

// The gated product p ([M, 2 d], glu) on a gated swapped tile in `mode`. Returns false (nothing launched)
// where it does not apply: more than one batch, a bias, operands or an output the copy engine or the
// 16-byte column stores cannot take, 2 d not a multiple of the tile's 128 weight rows, more activation rows
// than a tile takes (M > 256 on one column tile, M > 512 on two), or a device that cannot place the pairs.
bool launch_glu_swap(const Problem& p, const DeviceInfo& d, cudaStream_t st, GluSwap mode, bool bf16) {
  if (mode == GluSwap::Off || p.batch != 1 || p.bias != nullptr || p.out_f32 || p.a_sk != 1 || p.w_sk != 1 ||
      p.k == 0 || p.m == 0 || p.n % glu_swap_bm(mode) != 0)
    return false;
  if (p.o_sn != 1 || !aligned16(p.out) || (p.m > 1 && (p.o_sm * 2) % 16 != 0)) return false;
  const int cols = mode == GluSwap::One ? p.m : (p.m + 1) / 2;
  if (cols > 256) return false;
  const bool cluster = mode == GluSwap::TwoCluster || mode == GluSwap::TwoCluster192;
  const sm90::SwapWideKernel kr = sm90::glu_swap_kernel(glu_swap_bm(mode), cols, bf16, cluster);
  if (kr.fn == nullptr || (mode != GluSwap::One && kr.bn > p.m)) return false;
  Problem q = swapped(p);  // q.m: the 2 d weight rows (interleaved by the map), q.n: the M activation rows
  q.glu = false;
  const int tiles_m = q.m / kr.bm, tiles_n = (q.n + kr.bn - 1) / kr.bn;
  const int w_box = std::min(q.n, kr.bn);
  CUtensorMap map_a{}, map_w{};
  if (!make_glu_map(map_a, q.a, bf16, q.k, q.m / 2, q.a_sm, (cluster ? kr.bm / 2 : kr.bm) / 16) ||
      !make_map(map_w, q.w, bf16, q.k, q.n, q.w_sn, 1, 0, w_box))
    return false;
  Params prm = walk_params(q, cluster ? TileOrder{tiles_m, (tiles_n + 1) / 2, 8} : TileOrder{tiles_m, tiles_n, 16});
  prm.tma = 1;
  prm.out_vec16 = 1;
  prm.stage_tx = (kr.bm + w_box) * kRowBytes;
  const void* fn = reinterpret_cast<const void*>(kr.fn);
  BIK_CHECK(kr.smem <= d.smem_optin, "matmul: sm90 gated tile needs ", kr.smem,
            " bytes of shared memory; the device allows ", d.smem_optin);
  allow_dynamic_smem(fn, d.index, kr.smem);
  if (cluster) {
    const int most = max_active_pairs(fn, kr.threads, kr.smem, d);
    if (most < 1) return false;
    launch_pairs(kr.fn, kr.threads, kr.smem, prm.total_tiles, most, st, prm, map_a, map_w);
  } else {
    launch_kernel(kr.fn, unsigned(std::min<int64_t>(prm.total_tiles, d.sms)), kr.threads, size_t(kr.smem), st, prm,
                  map_a, map_w);
    BIK_CUDA_LAUNCH_CHECK();
  }
  g_glu_swap_launches.fetch_add(1, std::memory_order_relaxed);
  return true;
}

// ---- the q|k|v projection with its heads finished in the epilogue (gemm_heads.cuh) ---------------------
// Tiles whose BN holds whole heads (BN % D == 0; one kernel each is built), chosen as `choose` chooses among
// the plain tiles: up to 64 rows the 64-row tiles by fewest waves, up to 128 rows by fewest waves, past
// that by waves x tile_clocks. BIK_QKV_TILE names one of them instead (tests and benchmarks). The tile
// never changes a bit: the epilogue's arithmetic is per row and head, on the same sums.
// (Lists of static storage: the rule runs for every layer of every step, with no allocation.)
std::initializer_list<Choice> heads_tiles(int head_dim, int m) {
  static constexpr std::initializer_list<Choice> k128_small = {Choice::T64x128};
  static constexpr std::initializer_list<Choice> k128 = {Choice::T64x128, Choice::T128x128, Choice::T128x256};
  static constexpr std::initializer_list<Choice> k64_small = {Choice::T64x64, Choice::T64x128, Choice::T64x192};
  static constexpr std::initializer_list<Choice> k64 = {Choice::T64x64, Choice::T64x128, Choice::T64x192,
                                                        Choice::T128x128, Choice::T128x192};
  if (head_dim == 128) return m <= 64 ? k128_small : k128;
  return m <= 64 ? k64_small : k64;
}

Choice choose_heads(const Problem& p, const DeviceInfo& d, int head_dim) {
  const std::initializer_list<Choice> cands = heads_tiles(head_dim, p.m);
  if (const char* e = std::getenv("BIK_QKV_TILE"); e != nullptr && *e != '\0') {
    for (Choice c : heads_tiles(head_dim, 1 << 30))
      if (std::strcmp(e, kChoiceNames[int(c)]) == 0) return c;
    throw Error(detail::concat("BIK_QKV_TILE=", e, ": no q|k|v heads tile of that name for head_dim ", head_dim));
  }
  const TileRule rule{p, d};
  if (p.m <= 128) return rule.pick(cands, [&](const TileShape& t) { return rule.waves(t); });
  return rule.pick(cands, [&](const TileShape& t) { return rule.clocks(t); }, true);
}

std::atomic<uint64_t> g_heads_launches{0};

// false (nothing launched) where the copy engine cannot describe an operand.
bool launch_heads(Choice c, const Problem& p, const DeviceInfo& d, cudaStream_t st, const HeadsEpilogue& e,
                  int head_dim) {
  using T = __nv_bfloat16;
  switch (head_dim * 100 + int(c)) {
    case 128 * 100 + int(Choice::T64x128): return launch_one_cta<Tile64x128, T, 128>(p, d, st, 8, &e);
    case 128 * 100 + int(Choice::T128x128): return launch_one_cta<Tile128x128, T, 128>(p, d, st, 8, &e);
    case 128 * 100 + int(Choice::T128x256): return launch_one_cta<Tile128x256, T, 128>(p, d, st, 8, &e);
    case 64 * 100 + int(Choice::T64x64): return launch_one_cta<Tile64x64, T, 64>(p, d, st, 8, &e);
    case 64 * 100 + int(Choice::T64x128): return launch_one_cta<Tile64x128, T, 64>(p, d, st, 8, &e);
    case 64 * 100 + int(Choice::T64x192): return launch_one_cta<Tile64x192, T, 64>(p, d, st, 8, &e);
    case 64 * 100 + int(Choice::T128x128): return launch_one_cta<Tile128x128, T, 64>(p, d, st, 8, &e);
    case 64 * 100 + int(Choice::T128x192): return launch_one_cta<Tile128x192, T, 64>(p, d, st, 8, &e);
    default: break;
  }
  throw Error(detail::concat("gemm_sm90: no q|k|v heads kernel for tile ", kChoiceNames[int(c)], ", head_dim ",
                             head_dim));
}

}  // namespace

// The tile the gated product p ([M, 2 d], glu off) runs on by the rule and BIK_GEMM_GLU_SWAP (not checking
// whether its operands let a gated swapped tile apply): "glu-swap 1 x BN", "glu-swap 2c x BN" or
// "default <tile>[ pingpong]".
std::string sm90_gated_config_name(const Problem& p, const DeviceInfo& d) {
  const Choice c = choose(p, d, false);
  const GluSwap mode = glu_swap_for(p, d, c);
  const char* const names[] = {"0", "1", "2", "2c", "2c192"};
  const int bn = sm90::glu_swap_kernel(glu_swap_bm(mode), mode == GluSwap::One ? p.m : (p.m + 1) / 2, true,
                                       mode == GluSwap::TwoCluster || mode == GluSwap::TwoCluster192)
                     .bn;
  if (mode != GluSwap::Off && bn > 0) return std::string("glu-swap ") + names[int(mode)] + " x " + std::to_string(bn);
  const TileShape& t = kShapes[int(c)];
  return std::string("default ") + kChoiceNames[int(c)] +
         (!t.swapped && t.bm == 128 && pingpong_for(p, t.bn) ? " pingpong" : "");
}

std::string sm90_config_name(const Problem& p, const DeviceInfo& d) {
  const Choice c = choose(p, d);
  std::string name = std::string("sm90 ") + kChoiceNames[int(c)] + (tma_possible(p) ? " tma" : " tma-packed");
  if (kShapes[int(c)].swapped) return name;
  if (const ClusterMode mode = cluster_mode_for(p); mode != ClusterMode::Off && p.k > 0)
    name += share_w_for(p, kShapes[int(c)].bm, kShapes[int(c)].bn, mode) ? " cluster2w" : " cluster2a";
  else if (kShapes[int(c)].bm == 128 && pingpong_for(p, kShapes[int(c)].bn))
    name += " pingpong";
  return name;
}

}  // namespace gemm_detail

void gemm_sm90(const GemmArgs& g, Stream s) {
  const auto& d = gemm_detail::use_device(g.a.device.index);
  BIK_CHECK(d.arch == 90, "matmul: the wgmma GEMM needs an sm_90 GPU; device ", d.index, " is sm_", d.arch);
  const gemm_detail::Problem p = gemm_detail::make_problem(g);
  gemm_detail::run_packed(gemm_detail::choose(p, d), g, p, d, gemm_detail::stream_of(s));
}

// The gated product (Problem::glu) on the tile gemm_sm90 would pick for the plain [M, 2d] product, whose
// tile order, cluster and ping-pong rules it follows. false (nothing launched) where the gated epilogue
// does not apply: a swapped tile (its threads hold output rows, not a gate and its up column), a tile
// narrower than 64 columns, a bias, an output in another dtype.
bool gemm_sm90_gated(const GemmArgs& g, Stream s) {
  const auto& d = gemm_detail::use_device(g.a.device.index);
  if (d.arch != 90 || g.bias || g.out.dtype != g.a.dtype || g.n % 2 != 0) return false;
  if (g.a.dtype != DType::BF16 && g.a.dtype != DType::F16) return false;
  gemm_detail::Problem p = gemm_detail::make_problem(g);
  // Once: the rule weighs it, the fallback runs it. No pair tile: it cannot take the gated epilogue.
  const gemm_detail::Choice c = gemm_detail::choose(p, d, false);
  if (gemm_detail::launch_glu_swap(p, d, gemm_detail::stream_of(s), gemm_detail::glu_swap_for(p, d, c),
                                   g.a.dtype == DType::BF16)) {
    gemm_detail::g_gated_launches.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  const gemm_detail::TileShape& t = gemm_detail::kShapes[int(c)];
  if (t.swapped || t.bn % 64 != 0) return false;
  p.glu = true;
  gemm_detail::run_packed(c, g, p, d, gemm_detail::stream_of(s));
  gemm_detail::g_gated_launches.fetch_add(1, std::memory_order_relaxed);
  return true;
}

uint64_t gemm_sm90_pair_launches() { return gemm_detail::g_pair_launches.load(std::memory_order_relaxed); }

uint64_t gemm_sm90_glu_swap_launches() { return gemm_detail::g_glu_swap_launches.load(std::memory_order_relaxed); }

uint64_t gemm_sm90_gated_launches() { return gemm_detail::g_gated_launches.load(std::memory_order_relaxed); }

// Cluster launches so far in this process (the tests check that BIK_GEMM_CLUSTER really took that path).
uint64_t gemm_sm90_cluster_launches() { return gemm_detail::g_cluster_launches.load(std::memory_order_relaxed); }

// Ping-pong launches so far in this process (the tests check that BIK_GEMM_PINGPONG really took that path).
uint64_t gemm_sm90_pingpong_launches() { return gemm_detail::g_pingpong_launches.load(std::memory_order_relaxed); }

// Swapped-tile launches so far in this process (the tests check that BIK_GEMM_SWAP really took that path).
uint64_t gemm_sm90_swapped_launches() { return gemm_detail::g_swapped_launches.load(std::memory_order_relaxed); }

std::vector<std::string> gemm_sm90_tiles() {
  return std::vector<std::string>(std::begin(gemm_detail::kChoiceNames), std::end(gemm_detail::kChoiceNames));
}

std::vector<std::string> gemm_sm90_split_tiles() { return {"split64x64", "split64x128", "split128x128"}; }

uint64_t gemm_sm90_split_launches() { return gemm_detail::g_split_launches.load(std::memory_order_relaxed); }

int64_t gemm_split_len(int64_t k) { return ((k + 63) / 64 + 1) / 2 * 64; }

void gemm_sm90_tile(const GemmArgs& g, Stream s, const std::string& tile) {
  const auto& d = gemm_detail::use_device(g.a.device.index);
  BIK_CHECK(d.arch == 90, "matmul: the wgmma GEMM needs an sm_90 GPU; device ", d.index, " is sm_", d.arch);
  if (tile.rfind("split", 0) == 0) {
    const std::vector<std::string> split = gemm_sm90_split_tiles();
    BIK_CHECK(std::find(split.begin(), split.end(), tile) != split.end(), "gemm_sm90_tile: no tile named ", tile);
    BIK_CHECK(g.k > 64, "gemm_sm90_tile: a split tile needs K > 64, got ", g.k);
    const cudaStream_t st = gemm_detail::stream_of(s);
    const int len = int(gemm_split_len(g.k));
    gemm_detail::on_half_dtype(g.a.dtype, [&](auto t) {
      using T = decltype(t);
      namespace gd = gemm_detail;
      gd::with_packed(gd::make_problem(g), g.a.dtype == DType::BF16, st, [&](const gd::Problem& p) {
        if (tile == "split64x64") gd::launch_split<gd::SplitTile64x64, T>(p, d, st, len);
        else if (tile == "split64x128") gd::launch_split<gd::SplitTile64x128, T>(p, d, st, len);
        else gd::launch_split<gd::SplitTile128x128, T>(p, d, st, len);
      });
    });
    return;
  }
  const auto& names = gemm_detail::kChoiceNames;
  const auto it = std::find(std::begin(names), std::end(names), tile);
  BIK_CHECK(it != std::end(names), "gemm_sm90_tile: no tile named ", tile);
  const gemm_detail::Problem p = gemm_detail::make_problem(g);
  gemm_detail::run_packed(gemm_detail::Choice(it - std::begin(names)), g, p, d, gemm_detail::stream_of(s));
}

uint64_t gemm_sm90_heads_launches() { return gemm_detail::g_heads_launches.load(std::memory_order_relaxed); }

std::string qkv_heads_tile(int64_t m, int64_t n, int64_t k, int head_dim, int device) {
  const auto& d = gemm_detail::use_device(device);
  gemm_detail::Problem p;
  p.m = int(m), p.n = int(n), p.k = int(k);
  return gemm_detail::kChoiceNames[int(gemm_detail::choose_heads(p, d, head_dim))];
}

// qkv_projection (include/bik/attention.h, validated by the caller) in one wgmma kernel whose epilogue
// finishes the heads (gemm_heads.cuh). false, with nothing launched, where that kernel does not apply:
// BIK_QKV_FUSED=0, a GPU other than sm_90, a dtype other than bf16, D other than 64 or 128, a partial
// rotation, layouts the epilogue's paired loads and stores do not take, operands the copy engine cannot
// describe, or sizes where the calls are faster (below). The caller then runs the composed calls, which
// give the same bits.
bool qkv_projection_fused(const QkvProjection& a, Stream s) {
  if (const char* e = std::getenv("BIK_QKV_FUSED"); e != nullptr && std::strcmp(e, "0") == 0) return false;
  const auto& d = gemm_detail::use_device(a.x.device.index);
  const int64_t D = a.q_out.shape[2];
  if (d.arch != 90 || a.x.dtype != DType::BF16 || (D != 64 && D != 128) || a.cos_sin.shape[1] != D) return false;
  // rms_norm's tree on 256 lanes (gemm_heads.cuh)
  if (policy::row_reduce_plan(policy::Target{policy::Backend::CUDA, d.arch}, DType::BF16, D).lanes != 256) return false;
  auto aligned = [](const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % uintptr_t(bytes) == 0; };
  if (a.cos_sin.stride[1] != 1 || a.cos_sin.stride[0] % 2 != 0 || !aligned(a.cos_sin.data, 8)) return false;
  if (a.q_out.stride[2] != 1 || a.q_out.stride[0] % 2 != 0 || a.q_out.stride[1] % 2 != 0 || !aligned(a.q_out.data, 4))
    return false;
  if (!aligned(a.k_cache.data, 4) || !aligned(a.v_cache.data, 4)) return false;
  for (const auto* nw : {&a.q_norm, &a.k_norm})
    if (*nw && ((*nw)->stride[0] != 1 || !aligned((*nw)->data, 8))) return false;
  GemmArgs g = gemm_args_2d(a.qkv, a.x, a.w);
  g.bias = a.bias;
  gemm_detail::Problem p = gemm_detail::make_problem(g);
  p.out = nullptr;  // the epilogue stores heads only
  if (p.k == 0) return false;
  // Where the calls are faster: heads of 128, N >= 6144, 320 < M <= 416, where no heads tile fills the GPU
  // in few waves (64x128 takes three, 128x256 leaves SMs idle) and the plain product runs on a pair tile. On
  // an H200 at N = 6144, K = 4096, M = 336 / 352 / 384 the fused kernel took 50.9-51.7 us at best against
  // 46.1-47.1 for the calls; at 416 50.9 against 50.5; at 264-320 and from 448 on it was faster
  // (logs_h200/f777b3f_bench_qkv_tiles_m136_512.log). BIK_QKV_TILE keeps the fused kernel (benchmarks).
  const char* forced = std::getenv("BIK_QKV_TILE");
  if ((forced == nullptr || *forced == '\0') && D == 128 && p.n >= 6144 && p.m > 320 && p.m <= 416) return false;
  gemm_detail::HeadsEpilogue e;
  e.q_out = a.q_out.data;
  e.q_s0 = a.q_out.stride[0], e.q_s1 = a.q_out.stride[1];
  e.k_cache = a.k_cache.data, e.v_cache = a.v_cache.data;
  e.slots = a.slot_mapping.ptr<const int32_t>(), e.slot_s = a.slot_mapping.stride[0];
  e.pos = a.positions.ptr<const int32_t>(), e.pos_s = a.positions.stride[0];
  e.cos_sin = a.cos_sin.ptr<const float>(), e.cs_s0 = a.cos_sin.stride[0], e.max_pos = a.cos_sin.shape[0];
  if (a.q_norm) e.q_norm = a.q_norm->data, e.q_norm_f32 = a.q_norm->dtype == DType::F32;
  if (a.k_norm) e.k_norm = a.k_norm->data, e.k_norm_f32 = a.k_norm->dtype == DType::F32;
  e.eps = a.eps;
  e.q_heads = int(a.q_out.shape[1]), e.kv_heads = int(a.k_cache.shape[2]);
  e.neox = a.neox ? 1 : 0;
  const gemm_detail::Choice c = gemm_detail::choose_heads(p, d, int(D));
  if (!gemm_detail::launch_heads(c, p, d, gemm_detail::stream_of(s), e, int(D))) return false;
  gemm_detail::g_heads_launches.fetch_add(1, std::memory_order_relaxed);
  return true;
}

}  // namespace bik::cuda
