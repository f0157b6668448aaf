// Fused CPU kernels for xraypose's renderer: trilinear ray marching and Siddon.
//
// Plain C++17 with std::thread (OpenMP only for `omp simd` hints), no Python or
// torch headers: compiled once by the system C++ compiler into a shared library
// and called through ctypes (see cpu.py).  Every array is C-contiguous and passed as a raw pointer.
//
// Geometry (origin, direction, s_near, span, length) is float32 or float64 (G),
// the volume float32 or float64 (V); arithmetic and accumulation are float64,
// and every index is 64-bit, so no volume is too large to index.
//
// Rays are given in voxel-index space: ray = o_b + s d_br, s in [0, 1].
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <atomic>
#include <thread>
#include <type_traits>
#include <vector>

typedef int64_t i64;

namespace {

constexpr int CMAX = 8;  // channels accumulated per pass over the rays
constexpr int BS = 16;   // samples whose positions are computed together


// Rays are handed out in chunks from an atomic counter to nthreads std::threads (the
// caller's thread included).  Plain threads, not OpenMP: no spinning at barriers, so a
// busy machine does not make the team wait on a descheduled thread, and no second
// OpenMP runtime next to PyTorch's.
template <typename F>
void parallel_for(i64 total, int nthreads, F&& body) {
    const i64 chunk = 16;
    std::atomic<i64> next(0);
    auto work = [&]() {
        for (;;) {
            const i64 start = next.fetch_add(chunk);
            if (start >= total) return;
            const i64 stop = std::min(total, start + chunk);
            for (i64 it = start; it < stop; ++it) body(it);
        }
    };
    const int extra = (int)std::min<i64>(std::max(nthreads, 1) - 1, (total + chunk - 1) / chunk - 1);
    std::vector<std::thread> pool;
    pool.reserve(extra > 0 ? extra : 0);
    for (int t = 0; t < extra; ++t) pool.emplace_back(work);
    work();
    for (auto& th : pool) th.join();
}

template <typename V>
inline void atomic_add(V* p, double v) {  // compare-and-swap loop (GCC/Clang builtins, any float type)
    V old, want;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do {
        want = (V)(old + (V)v);
    } while (!__atomic_compare_exchange(p, &old, &want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
}

// The trilinear interpolant with the edge value held outside the grid (PyTorch's
// grid_sample, padding_mode="border"): coordinates are clamped to [0, n-1].
// The base corner is clamped to [0, max(n-2, 0)] and the weight adjusted, so
// all eight corners are always in the grid (for n = 1 the "+1" neighbour is the
// voxel itself, with weight 0): no bounds checks in the inner loop.
// The volume: shape (C, I, J, K) and element strides (any layout: channels-first
// contiguous, or channels-last, where the channels of a voxel share a cache line).
// order (B, R) or null: the order in which each pose's rays are traced (a permutation
// of 0..R-1 that keeps consecutive rays in the same cache lines; outputs keep ray order).
// occ (optional): empty-space skipping.  occ[(bi * OJ + bj) * OK + bk] == 0 promises that every
// voxel (all channels) with indices in [8 b - 8, 8 b + 16) along each axis is exactly zero
// (bricks of 8 voxels, dilated by one brick).  A block of 8 trilinear samples whose middle lies
// in such a brick, and whose samples all lie within 5 voxels of the middle, reads only zeros:
// it adds exactly 0 to the sums and to the pose-gradient sums, so it is skipped.
constexpr int OCC_SHIFT = 3;       // brick = 8 voxels
constexpr float OCC_REACH = 5.0f;  // |sample - middle| + corner reach (2.5) + 0.5 must stay within 8
struct Vol {
    i64 C, I, J, K, sc, si, sj, sk;
    const i64* order;
    const uint8_t* occ;
    i64 OI, OJ, OK;
};

inline Vol make_vol(const i64* d, const i64* order, const uint8_t* occ = nullptr, const i64* os = nullptr) {
    return Vol{d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], order, occ,
               os ? os[0] : 0, os ? os[1] : 0, os ? os[2] : 0};
}

// Skipping is allowed on a ray whose 8-sample blocks stay within OCC_REACH voxels of their middle
// (per axis): 4 steps of at most `step` voxels along the largest axis (the portable paths).
inline bool skip_allowed(const Vol& V, double span, i64 N, double dx, double dy, double dz) {
    const double stepmax = span / (double)N * std::max(std::fabs(dx), std::max(std::fabs(dy), std::fabs(dz)));
    return V.occ != nullptr && 4.0 * stepmax <= (double)OCC_REACH;
}

// The brick at (x, y, z) (voxel index space; clamped into the grid, NaN to 0) holds only zeros
// within one brick around it: the 8 samples of a block centred there read only exact zeros.
template <typename T>
inline bool occ_empty(const Vol& V, T x, T y, T z) {
    const T mx = (T)(V.I - 1), my = (T)(V.J - 1), mz = (T)(V.K - 1);
    x = x > 0 ? (x < mx ? x : mx) : 0;
    y = y > 0 ? (y < my ? y : my) : 0;
    z = z > 0 ? (z < mz ? z : mz) : 0;
    const i64 oi = std::min<i64>((i64)x >> OCC_SHIFT, V.OI - 1), oj = std::min<i64>((i64)y >> OCC_SHIFT, V.OJ - 1),
              ok = std::min<i64>((i64)z >> OCC_SHIFT, V.OK - 1);
    return V.occ[(oi * V.OJ + oj) * V.OK + ok] == 0;
}

struct Grid {
    i64 I, J, K, si, sj, sk;
    i64 off[8];  // corner offsets, x-major then y then z
    double mx, my, mz;  // n - 1 per axis
};

inline Grid make_grid(const Vol& v) {
    Grid g;
    const i64 I = v.I, J = v.J, K = v.K;
    g.I = I; g.J = J; g.K = K; g.si = v.si; g.sj = v.sj; g.sk = v.sk;
    const i64 sx = I > 1 ? v.si : 0, sy = J > 1 ? v.sj : 0, sz = K > 1 ? v.sk : 0;
    const i64 off[8] = {0, sz, sy, sy + sz, sx, sx + sz, sx + sy, sx + sy + sz};
    for (int q = 0; q < 8; ++q) g.off[q] = off[q];
    g.mx = (double)(I - 1); g.my = (double)(J - 1); g.mz = (double)(K - 1);
    return g;
}

struct Cell {
    i64 base;
    double wx, wy, wz;
    double gx, gy, gz;  // 1 where the coordinate is strictly inside (0, n-1), else 0 (clamped)
};

inline void axis(double x, double m, i64 n, i64& i, double& w, double& g) {
    g = (x > 0.0 && x < m) ? 1.0 : 0.0;
    const double xc = x > 0.0 ? (x < m ? x : m) : 0.0;  // NaN-safe clamp
    i64 f = (i64)xc;                                     // xc >= 0: truncation is floor
    if (f > n - 2) f = n > 1 ? n - 2 : 0;
    i = f;
    w = xc - (double)f;
}

inline void make_cell(double x, double y, double z, const Grid& G, Cell& c) {
    i64 ix, iy, iz;
    axis(x, G.mx, G.I, ix, c.wx, c.gx);
    axis(y, G.my, G.J, iy, c.wy, c.gy);
    axis(z, G.mz, G.K, iz, c.wz, c.gz);
    c.base = ix * G.si + iy * G.sj + iz * G.sk;
}

template <typename V>
inline void corners(const V* p, const Cell& c, const Grid& G, double v[8]) {
    p += c.base;
    for (int q = 0; q < 8; ++q) v[q] = (double)p[G.off[q]];
}

inline double interp(const Cell& c, const double v[8]) {
    const double c00 = v[0] + c.wz * (v[1] - v[0]), c01 = v[2] + c.wz * (v[3] - v[2]);
    const double c10 = v[4] + c.wz * (v[5] - v[4]), c11 = v[6] + c.wz * (v[7] - v[6]);
    const double c0 = c00 + c.wy * (c01 - c00), c1 = c10 + c.wy * (c11 - c10);
    return c0 + c.wx * (c1 - c0);
}

// ---------------------------------------------------------------- trilinear
// F[b, c, r] = sum_k f_c(o_b + s_k d_br), s_k = a_br + span_br (k + 1/2) / N.
template <typename G, typename V>
void tri_fwd(const V* vol, const Vol& VV, const G* origin, const G* dir, const G* a, const G* span,
             i64 B, i64 R, i64 N, G* out, int nthreads) {
    const i64 C = VV.C, SC = VV.sc, total = B * R;
    const double invN = 1.0 / (double)N;
    const Grid grid = make_grid(VV);
    for (i64 c0 = 0; c0 < C; c0 += CMAX) {
        const int nc = (int)std::min<i64>(CMAX, C - c0);
parallel_for(total, nthreads, [&](i64 it) {
        const i64 ray = VV.order ? (it / R) * R + VV.order[it] : it;
            const i64 b = ray / R;
            const double ox = origin[3 * b], oy = origin[3 * b + 1], oz = origin[3 * b + 2];
            const double dx = dir[3 * ray], dy = dir[3 * ray + 1], dz = dir[3 * ray + 2];
            const double s0 = a[ray], sp = span[ray];
            double acc[CMAX] = {0, 0, 0, 0, 0, 0, 0, 0};
            double X[BS], Y[BS], Z[BS];
            const bool skip_ok = skip_allowed(VV, sp, N, dx, dy, dz);
            for (i64 k0 = 0; k0 < N; k0 += BS) {
                const int nb = (int)std::min<i64>(BS, N - k0);
                for (int q = 0; q < nb; ++q) {
                    const double s = s0 + sp * (((double)(k0 + q) + 0.5) * invN);
                    X[q] = ox + s * dx; Y[q] = oy + s * dy; Z[q] = oz + s * dz;
                }
                bool empty[BS / 8] = {false, false};  // per 8 samples: they add exactly 0
                for (int h = 0; skip_ok && h < BS / 8; ++h) {
                    const double s = s0 + sp * ((double)(k0 + 8 * h + 4) * invN);
                    empty[h] = occ_empty<double>(VV, ox + s * dx, oy + s * dy, oz + s * dz);
                }
                for (int q = 0; q < nb; ++q) {
                    if (empty[q >> 3]) continue;
                    Cell cell;
                    make_cell(X[q], Y[q], Z[q], grid, cell);
                    for (int c = 0; c < nc; ++c) {
                        double v[8];
                        corners(vol + (c0 + c) * SC, cell, grid, v);
                        acc[c] += interp(cell, v);
                    }
                }
            }
            for (int c = 0; c < nc; ++c) out[(b * C + c0 + c) * R + (ray - b * R)] = (G)acc[c];
        });
    }
}


// Fast path of tri_fwd for float32 geometry and volumes of fewer than 2^31 elements:
// blocks of BS samples, branch-free float arithmetic and 32-bit offsets, so the
// compiler vectorises both the cell computation and the 8-corner gathers.
// Positions are o + s0 d (double, per ray) + tau d (float), tau = span (k + 1/2) / N.
// With jac (B, C, R, 6) it also stores, per ray and channel, sum_k grad f_c(x_k) and
// sum_k t_k grad f_c(x_k): the pose backward then needs no second pass over the volume.

// How the AVX2 path reads a sample's 8 corners (xrp_set_corner_loads: a mask of LOADS_PAIRS and
// LOADS_QUADS, the layouts that avoid gathers; cpu.py picks it per CPU by timing both):
//   LOADS_GATHER: one vgatherdps per corner (8 per 8 samples and channel);
//   LOADS_PAIRS:  the corners come in 4 pairs adjacent along k (element stride sk = 1): one 64-bit
//                 load per pair and sample, then a 4x4 transpose in each 128-bit lane; and for two
//                 channels stored channels-last (sc = 1, sk = 2: a pair of corners of both channels
//                 is 4 adjacent floats) one 128-bit load per pair and sample (LOADS_QUADS);
//                 for three or four channels stored channels-last in a voxel pitch of 4 floats
//                 (sc = 1, sk = 4: three channels padded to four) one 128-bit load per corner and
//                 sample, all channels of a corner at once (LOADS_QUADS4, the same mask bit).
//                 Same values, same arithmetic afterwards (bit-identical images); for CPUs whose
//                 gathers are slow (measured on an AMD EPYC (Zen 3): 1.6x faster renders).
constexpr int LOADS_GATHER = 0, LOADS_PAIRS = 1, LOADS_QUADS = 2;
constexpr int LOADS_QUADS4 = 4;  // a template value only (enabled by the LOADS_QUADS bit)
std::atomic<int> g_corner_loads(LOADS_GATHER);  // mask of LOADS_PAIRS | LOADS_QUADS

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define XRP_AVX2 1

// Two float pairs, at x and y, as one vector [x0 x1 y0 y1] (64-bit loads through may_alias types).
inline __m128 load_pairs(const float* x, const float* y) {
    return _mm_loadh_pi(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i*)x)), (const __m64*)y);
}

// Rows a[q] = [corners 0-3 of lane q | corners 0-3 of lane q + 4] -> v[j] = corner j of lanes 0..7.
inline void transpose_lanes(const __m256 a[4], __m256* v) {
    const __m256 t0 = _mm256_unpacklo_ps(a[0], a[1]), t1 = _mm256_unpacklo_ps(a[2], a[3]);
    const __m256 t2 = _mm256_unpackhi_ps(a[0], a[1]), t3 = _mm256_unpackhi_ps(a[2], a[3]);
    v[0] = _mm256_shuffle_ps(t0, t1, 0x44); v[1] = _mm256_shuffle_ps(t0, t1, 0xEE);
    v[2] = _mm256_shuffle_ps(t2, t3, 0x44); v[3] = _mm256_shuffle_ps(t2, t3, 0xEE);
}

// The 8 corners of 8 samples (base offsets o) without gathers: needs off[1] == off[3] - off[2] ==
// off[5] - off[4] == off[7] - off[6] == 1 (corner pairs adjacent in memory).
inline void corners_pairs(const float* p, __m256i o, const int32_t* off, __m256 v[8]) {
    alignas(32) int32_t oi[8];
    _mm256_store_si256((__m256i*)oi, o);
    __m256 a[4], b[4];
    for (int q = 0; q < 4; ++q) {
        const float *s = p + oi[q], *t = p + oi[q + 4];
        a[q] = _mm256_set_m128(load_pairs(t + off[0], t + off[2]), load_pairs(s + off[0], s + off[2]));
        b[q] = _mm256_set_m128(load_pairs(t + off[4], t + off[6]), load_pairs(s + off[4], s + off[6]));
    }
    transpose_lanes(a, v);
    transpose_lanes(b, v + 4);
}

// Every channel of a channels-last volume whose voxels are PITCH floats apart (sc = 1): PITCH = 2,
// two channels, corner pairs adjacent along k (sk = 2, off[2m + 1] - off[2m] == 2); PITCH = 4, three
// channels padded to four, or four (sk = 4; the pad is read: the caller guarantees the storage holds
// it).  Each 16-byte load holds 4 / PITCH corners of PITCH channels; after the 4x4 transposes
// v[8 c + j] = corner j of channel c (c < PITCH) for lanes 0..7.
template <int PITCH>
inline void corners_quads(const float* p, __m256i o, const int32_t* off, __m256 v[8 * PITCH]) {
    constexpr int PER = 4 / PITCH;  // corners per load
    alignas(32) int32_t oi[8];
    _mm256_store_si256((__m256i*)oi, o);
    for (int L = 0; L < 8 / PER; ++L) {
        __m256 a[4], t[4];
        for (int q = 0; q < 4; ++q)
            a[q] = _mm256_set_m128(_mm_loadu_ps(p + oi[q + 4] + off[L * PER]), _mm_loadu_ps(p + oi[q] + off[L * PER]));
        transpose_lanes(a, t);  // t[q] = channel q % PITCH of corner L * PER + q / PITCH
        for (int q = 0; q < 4; ++q) v[8 * (q % PITCH) + L * PER + q / PITCH] = t[q];
    }
}

// One ray of tri_fwd_f32 with AVX2 intrinsics: 8 samples per step, 32-bit offsets, corners read
// by gathers or pair loads (LOADS), block sums accumulated in double.  acc[c] += sum_k f_c; with
// jl, also the sample-gradient sums (see tri_fwd_f32).
template <int NCT, int LOADS>  // NCT > 0: that many channels, known at compile time (accumulators stay in registers)
inline void trace_avx2(const float* vol, i64 SC, int nc_rt, const int32_t* off, int32_t si, int32_t sj, int32_t sk,
                       float mx, float my, float mz, float bx, float by, float bz, float ex, float ey, float ez,
                       float dx, float dy, float dz, float sp, i64 N, double* acc, double* jl,
                       const uint8_t* occ, i64 OI, i64 OJ, i64 OK) {
    const __m256 iota = _mm256_setr_ps(0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f, 6.5f, 7.5f);
    const float invN = 1.0f / (float)N;
    const __m256 zero = _mm256_setzero_ps();
    const __m256 vmx = _mm256_set1_ps(mx), vmy = _mm256_set1_ps(my), vmz = _mm256_set1_ps(mz);
    const __m256 vbx = _mm256_set1_ps(bx), vby = _mm256_set1_ps(by), vbz = _mm256_set1_ps(bz);
    const __m256i vsi = _mm256_set1_epi32(si), vsj = _mm256_set1_epi32(sj), vsk = _mm256_set1_epi32(sk);
    const int nc = NCT > 0 ? NCT : nc_rt;
    __m256 accf[CMAX];  // float sums over at most 8 blocks (64 samples), then flushed to double
    __m256d accd[CMAX];
    __m256 jd[6 * CMAX];  // gradient sums: float lanes (pose gradients need ~1e-4, not 1e-7)
    for (int c = 0; c < nc; ++c) { accd[c] = _mm256_setzero_pd(); accf[c] = _mm256_setzero_ps(); }
    if (jl != nullptr)
        for (int j = 0; j < 6 * nc; ++j) jd[j] = _mm256_setzero_ps();
    auto add_d = [](__m256d& a, __m256 v) {
        a = _mm256_add_pd(a, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                                           _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
    };
    for (i64 k0 = 0; k0 < N; k0 += 8) {
      bool empty = false;
      if (occ != nullptr) {  // the block's middle (between samples k0+3 and k0+4), clamped into the grid
          const float tm = sp * ((float)(k0 + 4) * invN);
          const float xm = std::min(std::max(ex + tm * dx, 0.0f), mx), ym = std::min(std::max(ey + tm * dy, 0.0f), my),
                      zm = std::min(std::max(ez + tm * dz, 0.0f), mz);
          const i64 oi = std::min<i64>((i64)xm >> OCC_SHIFT, OI - 1), oj = std::min<i64>((i64)ym >> OCC_SHIFT, OJ - 1),
                    ok = std::min<i64>((i64)zm >> OCC_SHIFT, OK - 1);
          empty = occ[(oi * OJ + oj) * OK + ok] == 0;
      }
      if (!empty) {
        const __m256 kf = _mm256_add_ps(_mm256_set1_ps((float)k0), iota);  // k + 1/2
        const __m256 valid = _mm256_cmp_ps(kf, _mm256_set1_ps((float)N), _CMP_LT_OQ);
        const __m256 t = _mm256_mul_ps(kf, _mm256_set1_ps(invN));
        const __m256 tau = _mm256_mul_ps(_mm256_set1_ps(sp), t);
        const __m256 x = _mm256_fmadd_ps(tau, _mm256_set1_ps(dx), _mm256_set1_ps(ex));
        const __m256 y = _mm256_fmadd_ps(tau, _mm256_set1_ps(dy), _mm256_set1_ps(ey));
        const __m256 z = _mm256_fmadd_ps(tau, _mm256_set1_ps(dz), _mm256_set1_ps(ez));
        const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, zero), vmx);
        const __m256 yc = _mm256_min_ps(_mm256_max_ps(y, zero), vmy);
        const __m256 zc = _mm256_min_ps(_mm256_max_ps(z, zero), vmz);
        const __m256 fx = _mm256_min_ps(_mm256_floor_ps(xc), vbx);
        const __m256 fy = _mm256_min_ps(_mm256_floor_ps(yc), vby);
        const __m256 fz = _mm256_min_ps(_mm256_floor_ps(zc), vbz);
        const __m256 wx = _mm256_sub_ps(xc, fx), wy = _mm256_sub_ps(yc, fy), wz = _mm256_sub_ps(zc, fz);
        const __m256i o = _mm256_add_epi32(
            _mm256_add_epi32(_mm256_mullo_epi32(_mm256_cvttps_epi32(fx), vsi), _mm256_mullo_epi32(_mm256_cvttps_epi32(fy), vsj)),
            _mm256_mullo_epi32(_mm256_cvttps_epi32(fz), vsk));
        __m256 gmx = zero, gmy = zero, gmz = zero;
        if (jl != nullptr) {  // gradient passes where the coordinate is strictly inside (0, n-1)
            gmx = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(x, zero, _CMP_GT_OQ), _mm256_cmp_ps(x, vmx, _CMP_LT_OQ)), valid);
            gmy = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(y, zero, _CMP_GT_OQ), _mm256_cmp_ps(y, vmy, _CMP_LT_OQ)), valid);
            gmz = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(z, zero, _CMP_GT_OQ), _mm256_cmp_ps(z, vmz, _CMP_LT_OQ)), valid);
        }
        __m256 both[LOADS == LOADS_QUADS ? 16 : (LOADS == LOADS_QUADS4 ? 32 : 1)];
        if constexpr (LOADS == LOADS_QUADS || LOADS == LOADS_QUADS4)
            corners_quads<LOADS == LOADS_QUADS ? 2 : 4>(vol, o, off, both);
        for (int c = 0; c < nc; ++c) {
            const float* p = vol + c * SC;
            __m256 cv[8];
            if constexpr (LOADS == LOADS_QUADS || LOADS == LOADS_QUADS4) {
                for (int q = 0; q < 8; ++q) cv[q] = both[8 * c + q];
            } else if constexpr (LOADS == LOADS_PAIRS) {
                corners_pairs(p, o, off, cv);
            } else {
                for (int q = 0; q < 8; ++q) cv[q] = _mm256_i32gather_ps(p + off[q], o, 4);
            }
            const __m256 v0 = cv[0], v1 = cv[1], v2 = cv[2], v3 = cv[3], v4 = cv[4], v5 = cv[5], v6 = cv[6], v7 = cv[7];
            const __m256 d10 = _mm256_sub_ps(v1, v0), d32 = _mm256_sub_ps(v3, v2);
            const __m256 d54 = _mm256_sub_ps(v5, v4), d76 = _mm256_sub_ps(v7, v6);
            const __m256 c00 = _mm256_fmadd_ps(wz, d10, v0), c01 = _mm256_fmadd_ps(wz, d32, v2);
            const __m256 c10 = _mm256_fmadd_ps(wz, d54, v4), c11 = _mm256_fmadd_ps(wz, d76, v6);
            const __m256 e0 = _mm256_fmadd_ps(wy, _mm256_sub_ps(c01, c00), c00);
            const __m256 e1 = _mm256_fmadd_ps(wy, _mm256_sub_ps(c11, c10), c10);
            const __m256 val = _mm256_and_ps(_mm256_fmadd_ps(wx, _mm256_sub_ps(e1, e0), e0), valid);
            accf[c] = _mm256_add_ps(accf[c], val);
            if (jl != nullptr) {
                const __m256 gx = _mm256_and_ps(_mm256_sub_ps(e1, e0), gmx);                      // d/dx
                // d/dy: lerp over x of (c01 - c00) and (c11 - c10)
                const __m256 dy0 = _mm256_sub_ps(c01, c00), dy1 = _mm256_sub_ps(c11, c10);
                const __m256 gy = _mm256_and_ps(_mm256_fmadd_ps(wx, _mm256_sub_ps(dy1, dy0), dy0), gmy);
                // d/dz: bilinear over (x, y) of the z-differences
                const __m256 z0 = _mm256_fmadd_ps(wy, _mm256_sub_ps(d32, d10), d10);
                const __m256 z1 = _mm256_fmadd_ps(wy, _mm256_sub_ps(d76, d54), d54);
                const __m256 gz = _mm256_and_ps(_mm256_fmadd_ps(wx, _mm256_sub_ps(z1, z0), z0), gmz);
                __m256* J = jd + 6 * c;
                J[0] = _mm256_add_ps(J[0], gx); J[1] = _mm256_add_ps(J[1], gy); J[2] = _mm256_add_ps(J[2], gz);
                J[3] = _mm256_fmadd_ps(t, gx, J[3]); J[4] = _mm256_fmadd_ps(t, gy, J[4]);
                J[5] = _mm256_fmadd_ps(t, gz, J[5]);
            }
        }
      }  // !empty
        if (((k0 >> 3) & 7) == 7 || k0 + 8 >= N) {
            for (int c = 0; c < nc; ++c) { add_d(accd[c], accf[c]); accf[c] = _mm256_setzero_ps(); }
        }
    }
    auto hsum = [](__m256d a) {
        const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
        return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
    };
    for (int c = 0; c < nc; ++c) acc[c] += hsum(accd[c]);
    if (jl != nullptr)
        for (int j = 0; j < 6 * nc; ++j) {
            __m256d a = _mm256_setzero_pd();
            add_d(a, jd[j]);
            jl[j] += hsum(a);
        }
}
#endif

// get(ray, b, o[3], d[3], s0, span, scale) supplies each ray; out = scale * sum, raw = sum (if given).
template <typename V, typename Get>
void tri_fwd_f32(const V* vol, const Vol& VV, Get get, i64 B, i64 R, i64 N, float* out, float* raw, float* jac,
                 int nthreads) {
    const i64 C = VV.C, total = B * R;
    const int32_t SC = (int32_t)VV.sc;
    const Grid grid = make_grid(VV);
    int32_t off[8];
    for (int q = 0; q < 8; ++q) off[q] = (int32_t)grid.off[q];
    const int32_t si = (int32_t)VV.si, sj = (int32_t)VV.sj, sk = (int32_t)VV.sk;
    const float mx = (float)grid.mx, my = (float)grid.my, mz = (float)grid.mz;
    // largest base index per axis: n - 2 (n > 1) or 0
    const float bx = (float)std::max<i64>(VV.I - 2, 0), by = (float)std::max<i64>(VV.J - 2, 0),
                bz = (float)std::max<i64>(VV.K - 2, 0);
    const float invN = 1.0f / (float)N;
    // pair loads need the z-neighbour corners adjacent (k contiguous, K > 1); quads two channels
    // stored channels-last (sc = 1, sk = 2, K > 1)
    const int loads = g_corner_loads.load(std::memory_order_relaxed);
    auto adjacent = [&](int32_t gap) {
        return off[1] - off[0] == gap && off[3] - off[2] == gap && off[5] - off[4] == gap && off[7] - off[6] == gap;
    };
    const bool pairs = (loads & LOADS_PAIRS) && adjacent(1);
    const bool quads = (loads & LOADS_QUADS) && C == 2 && SC == 1 && adjacent(2);
    const bool quads4 = (loads & LOADS_QUADS) && (C == 3 || C == 4) && SC == 1 && adjacent(4);
    (void)pairs; (void)quads; (void)quads4;
    for (i64 c0 = 0; c0 < C; c0 += CMAX) {
        const int nc = (int)std::min<i64>(CMAX, C - c0);
parallel_for(total, nthreads, [&](i64 it) {
        const i64 ray = VV.order ? (it / R) * R + VV.order[it] : it;
            const i64 b = ray / R;
            double ov[3], dv[3], s0, spd, scale;
            get(ray, b, ov, dv, s0, spd, scale);
            const double dx = dv[0], dy = dv[1], dz = dv[2];
            const float ex = (float)(ov[0] + s0 * dx), ey = (float)(ov[1] + s0 * dy), ez = (float)(ov[2] + s0 * dz);
            const float fdx = (float)dx, fdy = (float)dy, fdz = (float)dz, sp = (float)spd;
            double acc[CMAX] = {0, 0, 0, 0, 0, 0, 0, 0};
            double jl[6 * CMAX] = {0};
            // skipping needs every sample of a block within OCC_REACH voxels (per axis) of its middle
            const bool skip_ok = skip_allowed(VV, spd, N, dx, dy, dz);
#ifdef XRP_AVX2
            if constexpr (std::is_same<V, float>::value) {
                auto tr = quads ? trace_avx2<2, LOADS_QUADS>
                        : quads4 ? (nc == 3 ? trace_avx2<3, LOADS_QUADS4> : trace_avx2<4, LOADS_QUADS4>)
                        : pairs ? (nc == 3 ? trace_avx2<3, LOADS_PAIRS> : nc == 2 ? trace_avx2<2, LOADS_PAIRS>
                                   : (nc == 1 ? trace_avx2<1, LOADS_PAIRS> : trace_avx2<0, LOADS_PAIRS>))
                                : (nc == 3 ? trace_avx2<3, LOADS_GATHER> : nc == 2 ? trace_avx2<2, LOADS_GATHER>
                                   : (nc == 1 ? trace_avx2<1, LOADS_GATHER> : trace_avx2<0, LOADS_GATHER>));
                tr(vol + c0 * VV.sc, VV.sc, nc, off, si, sj, sk, mx, my, mz, bx, by, bz, ex, ey, ez, fdx, fdy,
                           fdz, sp, N, acc, jac != nullptr ? jl : nullptr, skip_ok ? VV.occ : nullptr, VV.OI, VV.OJ,
                           VV.OK);
                for (int c = 0; c < nc; ++c) {
                    const i64 idx = (b * C + c0 + c) * R + (ray - b * R);
                    out[idx] = (float)(scale * acc[c]);
                    if (raw != nullptr) raw[idx] = (float)acc[c];
                    if (jac != nullptr)
                        for (int j = 0; j < 6; ++j) jac[idx * 6 + j] = (float)jl[6 * c + j];
                }
                return;
            }
#endif
            alignas(64) int32_t OFF[BS];
            alignas(64) float WX[BS], WY[BS], WZ[BS], MX[BS], MY[BS], MZ[BS];
            auto half_empty = [&](i64 k) {  // samples k .. k+7 add exactly 0 (none past N: nothing to add)
                if (k >= N) return true;
                const float tm = sp * ((float)(k + 4) * invN);
                return occ_empty<float>(VV, ex + tm * fdx, ey + tm * fdy, ez + tm * fdz);
            };
            for (i64 k0 = 0; k0 < N; k0 += BS) {
                const int nb = (int)std::min<i64>(BS, N - k0);
                if (skip_ok && half_empty(k0) && half_empty(k0 + 8)) continue;  // BS = 16: both halves
#pragma omp simd
                for (int q = 0; q < BS; ++q) {
                    const float tau = sp * (((float)(k0 + q) + 0.5f) * invN);
                    float x = ex + tau * fdx, y = ey + tau * fdy, z = ez + tau * fdz;
                    x = std::min(std::max(x, 0.0f), mx);
                    y = std::min(std::max(y, 0.0f), my);
                    z = std::min(std::max(z, 0.0f), mz);
                    const float fx = std::min((float)(int32_t)x, bx), fy = std::min((float)(int32_t)y, by),
                                fz = std::min((float)(int32_t)z, bz);
                    WX[q] = x - fx; WY[q] = y - fy; WZ[q] = z - fz;
                    OFF[q] = (int32_t)fx * si + (int32_t)fy * sj + (int32_t)fz * sk;
                }
                if (jac != nullptr) {
#pragma omp simd
                    for (int q = 0; q < BS; ++q) {
                        const float tau = sp * (((float)(k0 + q) + 0.5f) * invN);
                        const float x = ex + tau * fdx, y = ey + tau * fdy, z = ez + tau * fdz;
                        const bool valid = q < nb;
                        MX[q] = (valid && x > 0.0f && x < mx) ? 1.0f : 0.0f;
                        MY[q] = (valid && y > 0.0f && y < my) ? 1.0f : 0.0f;
                        MZ[q] = (valid && z > 0.0f && z < mz) ? 1.0f : 0.0f;
                    }
                }
                for (int c = 0; c < nc; ++c) {
                    const V* p = vol + (c0 + c) * SC;
                    float sum = 0.0f, bsx = 0, bsy = 0, bsz = 0, btx = 0, bty = 0, btz = 0;
                    if (jac == nullptr) {
#pragma omp simd reduction(+ : sum)
                        for (int q = 0; q < BS; ++q) {
                            const int32_t o = OFF[q];
                            const float wx = WX[q], wy = WY[q], wz = WZ[q];
                            const float v0 = (float)p[o + off[0]], v1 = (float)p[o + off[1]];
                            const float v2 = (float)p[o + off[2]], v3 = (float)p[o + off[3]];
                            const float v4 = (float)p[o + off[4]], v5 = (float)p[o + off[5]];
                            const float v6 = (float)p[o + off[6]], v7 = (float)p[o + off[7]];
                            const float c00 = v0 + wz * (v1 - v0), c01 = v2 + wz * (v3 - v2);
                            const float c10 = v4 + wz * (v5 - v4), c11 = v6 + wz * (v7 - v6);
                            const float e0 = c00 + wy * (c01 - c00), e1 = c10 + wy * (c11 - c10);
                            sum += q < nb ? e0 + wx * (e1 - e0) : 0.0f;
                        }
                    } else {
#pragma omp simd reduction(+ : sum, bsx, bsy, bsz, btx, bty, btz)
                        for (int q = 0; q < BS; ++q) {
                            const int32_t o = OFF[q];
                            const float wx = WX[q], wy = WY[q], wz = WZ[q];
                            const float ux = 1.0f - wx, uy = 1.0f - wy, uz = 1.0f - wz;
                            const float v0 = (float)p[o + off[0]], v1 = (float)p[o + off[1]];
                            const float v2 = (float)p[o + off[2]], v3 = (float)p[o + off[3]];
                            const float v4 = (float)p[o + off[4]], v5 = (float)p[o + off[5]];
                            const float v6 = (float)p[o + off[6]], v7 = (float)p[o + off[7]];
                            const float c00 = v0 + wz * (v1 - v0), c01 = v2 + wz * (v3 - v2);
                            const float c10 = v4 + wz * (v5 - v4), c11 = v6 + wz * (v7 - v6);
                            const float e0 = c00 + wy * (c01 - c00), e1 = c10 + wy * (c11 - c10);
                            sum += q < nb ? e0 + wx * (e1 - e0) : 0.0f;
                            const float gx = MX[q] * (uy * uz * (v4 - v0) + uy * wz * (v5 - v1) + wy * uz * (v6 - v2) +
                                                      wy * wz * (v7 - v3));
                            const float gy = MY[q] * (ux * uz * (v2 - v0) + ux * wz * (v3 - v1) + wx * uz * (v6 - v4) +
                                                      wx * wz * (v7 - v5));
                            const float gz = MZ[q] * (ux * uy * (v1 - v0) + ux * wy * (v3 - v2) + wx * uy * (v5 - v4) +
                                                      wx * wy * (v7 - v6));
                            const float t = ((float)(k0 + q) + 0.5f) * invN;
                            bsx += gx; bsy += gy; bsz += gz;
                            btx += t * gx; bty += t * gy; btz += t * gz;
                        }
                        double* J = jl + 6 * c;
                        J[0] += bsx; J[1] += bsy; J[2] += bsz; J[3] += btx; J[4] += bty; J[5] += btz;
                    }
                    acc[c] += (double)sum;
                }
            }
            if (jac != nullptr)
                for (int c = 0; c < nc; ++c)
                    for (int j = 0; j < 6; ++j) jac[((b * C + c0 + c) * R + (ray - b * R)) * 6 + j] = (float)jl[6 * c + j];
            for (int c = 0; c < nc; ++c) {
                const i64 idx = (b * C + c0 + c) * R + (ray - b * R);
                out[idx] = (float)(scale * acc[c]);
                if (raw != nullptr) raw[idx] = (float)acc[c];
            }
        });
    }
}


// Fast path of tri_bwd (pose gradients only) for float32 geometry, as tri_fwd_f32.
template <typename V>
void tri_bwd_f32(const V* vol, const Vol& VV, const float* origin, const float* dir, const float* a,
                 const float* span, i64 B, i64 R, i64 N, const float* gF, float* gO, float* gD, float* gA,
                 float* gS, int nthreads) {
    const i64 C = VV.C, total = B * R;
    const int32_t SC = (int32_t)VV.sc;
    const Grid grid = make_grid(VV);
    int32_t off[8];
    for (int q = 0; q < 8; ++q) off[q] = (int32_t)grid.off[q];
    const int32_t si = (int32_t)VV.si, sj = (int32_t)VV.sj, sk = (int32_t)VV.sk;
    const float mx = (float)grid.mx, my = (float)grid.my, mz = (float)grid.mz;
    const float bx = (float)std::max<i64>(VV.I - 2, 0), by = (float)std::max<i64>(VV.J - 2, 0),
                bz = (float)std::max<i64>(VV.K - 2, 0);
    const float invN = 1.0f / (float)N;
parallel_for(total, nthreads, [&](i64 it) {
        const i64 ray = VV.order ? (it / R) * R + VV.order[it] : it;
        const i64 b = ray / R, r = ray - b * R;
        const double dx = dir[3 * ray], dy = dir[3 * ray + 1], dz = dir[3 * ray + 2];
        const double s0 = a[ray];
        const float ex = (float)(origin[3 * b] + s0 * dx), ey = (float)(origin[3 * b + 1] + s0 * dy),
                    ez = (float)(origin[3 * b + 2] + s0 * dz);
        const float fdx = (float)dx, fdy = (float)dy, fdz = (float)dz, sp = span[ray];
        double sx = 0, sy = 0, sz = 0, tx = 0, ty = 0, tz = 0;
        bool any = false;
        for (i64 c = 0; c < C; ++c) any |= gF[(b * C + c) * R + r] != 0;
        alignas(64) int32_t OFF[BS];
        alignas(64) float WX[BS], WY[BS], WZ[BS], MX[BS], MY[BS], MZ[BS];
        alignas(64) float VQ[8][BS];
        const bool skip_ok = skip_allowed(VV, (double)sp, N, dx, dy, dz);
        auto half_empty = [&](i64 k) {  // samples k .. k+7 have zero gradient (none past N)
            if (k >= N) return true;
            const float tm = sp * ((float)(k + 4) * invN);
            return occ_empty<float>(VV, ex + tm * fdx, ey + tm * fdy, ez + tm * fdz);
        };
        for (i64 k0 = 0; any && k0 < N; k0 += BS) {
            const int nb = (int)std::min<i64>(BS, N - k0);
            if (skip_ok && half_empty(k0) && half_empty(k0 + 8)) continue;
#pragma omp simd
            for (int q = 0; q < BS; ++q) {
                const float tau = sp * (((float)(k0 + q) + 0.5f) * invN);
                float x = ex + tau * fdx, y = ey + tau * fdy, z = ez + tau * fdz;
                const bool valid = q < nb;
                MX[q] = (valid && x > 0.0f && x < mx) ? 1.0f : 0.0f;
                MY[q] = (valid && y > 0.0f && y < my) ? 1.0f : 0.0f;
                MZ[q] = (valid && z > 0.0f && z < mz) ? 1.0f : 0.0f;
                x = std::min(std::max(x, 0.0f), mx);
                y = std::min(std::max(y, 0.0f), my);
                z = std::min(std::max(z, 0.0f), mz);
                const float fx = std::min((float)(int32_t)x, bx), fy = std::min((float)(int32_t)y, by),
                            fz = std::min((float)(int32_t)z, bz);
                WX[q] = x - fx; WY[q] = y - fy; WZ[q] = z - fz;
                OFF[q] = (int32_t)fx * si + (int32_t)fy * sj + (int32_t)fz * sk;
            }
            for (int j = 0; j < 8; ++j)
                for (int q = 0; q < BS; ++q) VQ[j][q] = 0.0f;
            for (i64 c = 0; c < C; ++c) {
                const float g = (float)gF[(b * C + c) * R + r];
                if (g == 0.0f) continue;
                const V* p = vol + c * SC;
#pragma omp simd
                for (int q = 0; q < BS; ++q) {
                    const int32_t o = OFF[q];
                    VQ[0][q] += g * (float)p[o + off[0]]; VQ[1][q] += g * (float)p[o + off[1]];
                    VQ[2][q] += g * (float)p[o + off[2]]; VQ[3][q] += g * (float)p[o + off[3]];
                    VQ[4][q] += g * (float)p[o + off[4]]; VQ[5][q] += g * (float)p[o + off[5]];
                    VQ[6][q] += g * (float)p[o + off[6]]; VQ[7][q] += g * (float)p[o + off[7]];
                }
            }
            float bsx = 0, bsy = 0, bsz = 0, btx = 0, bty = 0, btz = 0;
#pragma omp simd reduction(+ : bsx, bsy, bsz, btx, bty, btz)
            for (int q = 0; q < BS; ++q) {
                const float wx = WX[q], wy = WY[q], wz = WZ[q], ux = 1.0f - wx, uy = 1.0f - wy, uz = 1.0f - wz;
                const float v0 = VQ[0][q], v1 = VQ[1][q], v2 = VQ[2][q], v3 = VQ[3][q];
                const float v4 = VQ[4][q], v5 = VQ[5][q], v6 = VQ[6][q], v7 = VQ[7][q];
                const float gx = MX[q] * (uy * uz * (v4 - v0) + uy * wz * (v5 - v1) + wy * uz * (v6 - v2) +
                                          wy * wz * (v7 - v3));
                const float gy = MY[q] * (ux * uz * (v2 - v0) + ux * wz * (v3 - v1) + wx * uz * (v6 - v4) +
                                          wx * wz * (v7 - v5));
                const float gz = MZ[q] * (ux * uy * (v1 - v0) + ux * wy * (v3 - v2) + wx * uy * (v5 - v4) +
                                          wx * wy * (v7 - v6));
                const float t = ((float)(k0 + q) + 0.5f) * invN;
                bsx += gx; bsy += gy; bsz += gz;
                btx += t * gx; bty += t * gy; btz += t * gz;
            }
            sx += bsx; sy += bsy; sz += bsz; tx += btx; ty += bty; tz += btz;
        }
        gO[3 * ray] = (float)sx; gO[3 * ray + 1] = (float)sy; gO[3 * ray + 2] = (float)sz;
        gD[3 * ray] = (float)(s0 * sx + sp * tx);
        gD[3 * ray + 1] = (float)(s0 * sy + sp * ty);
        gD[3 * ray + 2] = (float)(s0 * sz + sp * tz);
        gA[ray] = (float)(sx * dx + sy * dy + sz * dz);
        gS[ray] = (float)(tx * dx + ty * dy + tz * dz);
    });
}

// Backward of tri_fwd, given gF (B, C, R).  With G_k = grad_x sum_c gF_c f_c(x_k), t_k = (k + 1/2) / N:
//   gO_br = sum_k G_k,  gD_br = sum_k s_k G_k,  gA_br = gO_br . d,  gS_br = (sum_k t_k G_k) . d.
// gvol (C, I, J, K), when given, accumulates gF_c times every sample's trilinear weights.
template <typename G, typename V>
void tri_bwd(const V* vol, const Vol& VV, const G* origin, const G* dir, const G* a, const G* span,
             i64 B, i64 R, i64 N, const G* gF, G* gO, G* gD, G* gA, G* gS, V* gvol, int nthreads) {
    const i64 C = VV.C, SC = VV.sc, total = B * R;
    const double invN = 1.0 / (double)N;
    const Grid grid = make_grid(VV);
    const bool geo = gO != nullptr;
parallel_for(total, nthreads, [&](i64 it) {
        const i64 ray = VV.order ? (it / R) * R + VV.order[it] : it;
        const i64 b = ray / R, r = ray - b * R;
        const double ox = origin[3 * b], oy = origin[3 * b + 1], oz = origin[3 * b + 2];
        const double dx = dir[3 * ray], dy = dir[3 * ray + 1], dz = dir[3 * ray + 2];
        const double s0 = a[ray], sp = span[ray];
        double sx = 0, sy = 0, sz = 0, tx = 0, ty = 0, tz = 0;
        bool any = false;
        for (i64 c = 0; c < C; ++c) any |= gF[(b * C + c) * R + r] != 0;
        // empty blocks have zero pose gradient; the volume gradient (gvol) needs every sample
        const bool skip_ok = gvol == nullptr && skip_allowed(VV, sp, N, dx, dy, dz);
        bool empty = false;
        if (any) {
            for (i64 k = 0; k < N; ++k) {
                if (skip_ok && (k & 7) == 0) {
                    const double s = s0 + sp * ((double)(k + 4) * invN);
                    empty = occ_empty<double>(VV, ox + s * dx, oy + s * dy, oz + s * dz);
                }
                if (empty) continue;
                const double t = ((double)k + 0.5) * invN;
                const double s = s0 + sp * t;
                Cell cell;
                make_cell(ox + s * dx, oy + s * dy, oz + s * dz, grid, cell);
                const double wx = cell.wx, wy = cell.wy, wz = cell.wz, ux = 1 - wx, uy = 1 - wy, uz = 1 - wz;
                if (geo) {
                    double v[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // sum_c gF_c vol_c at the corners
                    for (i64 c = 0; c < C; ++c) {
                        const double g = (double)gF[(b * C + c) * R + r];
                        if (g == 0) continue;
                        double vc[8];
                        corners(vol + c * SC, cell, grid, vc);
                        for (int q = 0; q < 8; ++q) v[q] += g * vc[q];
                    }
                    const double gx = cell.gx * (uy * uz * (v[4] - v[0]) + uy * wz * (v[5] - v[1]) + wy * uz * (v[6] - v[2]) +
                                      wy * wz * (v[7] - v[3]));
                    const double gy = cell.gy * (ux * uz * (v[2] - v[0]) + ux * wz * (v[3] - v[1]) + wx * uz * (v[6] - v[4]) +
                                      wx * wz * (v[7] - v[5]));
                    const double gz = cell.gz * (ux * uy * (v[1] - v[0]) + ux * wy * (v[3] - v[2]) + wx * uy * (v[5] - v[4]) +
                                      wx * wy * (v[7] - v[6]));
                    sx += gx; sy += gy; sz += gz;
                    tx += t * gx; ty += t * gy; tz += t * gz;
                }
                if (gvol != nullptr) {
                    const double w[8] = {ux * uy * uz, ux * uy * wz, ux * wy * uz, ux * wy * wz,
                                         wx * uy * uz, wx * uy * wz, wx * wy * uz, wx * wy * wz};
                    for (i64 c = 0; c < C; ++c) {
                        const double g = (double)gF[(b * C + c) * R + r];
                        if (g == 0) continue;
                        V* p = gvol + c * SC + cell.base;
                        for (int q = 0; q < 8; ++q)
                            if (w[q] != 0) atomic_add(p + grid.off[q], g * w[q]);
                    }
                }
            }
        }
        if (geo) {
            gO[3 * ray] = (G)sx; gO[3 * ray + 1] = (G)sy; gO[3 * ray + 2] = (G)sz;
            gD[3 * ray] = (G)(s0 * sx + sp * tx);
            gD[3 * ray + 1] = (G)(s0 * sy + sp * ty);
            gD[3 * ray + 2] = (G)(s0 * sz + sp * tz);
            gA[ray] = (G)(sx * dx + sy * dy + sz * dz);
            gS[ray] = (G)(tx * dx + ty * dy + tz * dz);
        }
    });
}


// ---------------------------------------------------------------- Siddon
// Voxel (i, j, k) fills [i-1/2, i+1/2] x ...; the ray's chord [s_near, s_far] is
// cut at every voxel plane it crosses (three sorted sequences, merged on the fly);
// each piece's voxel is round(o + mid d), clamped, as in the reference.
struct SidAxis {
    double o, d;     // origin and direction along this axis
    i64 n;           // voxels
    i64 p, pend;     // next plane index and one past the last, walking in +/- direction
    int step;        // +1 or -1
    double next;     // parameter of the next crossing (inf when none left)
};

inline void sid_axis_init(SidAxis& A, double o, double d, i64 n, double s_near, double s_far) {
    A.o = o; A.d = d; A.n = n; A.next = INFINITY; A.step = d > 0 ? 1 : -1;
    A.p = 0; A.pend = 0;
    if (!(std::fabs(d) > 0) || !(s_far > s_near)) return;
    // planes at index p - 1/2, p = 0..n; crossing alpha_p = (p - 1/2 - o) / d.
    const double x0 = o + s_near * d, x1 = o + s_far * d;
    const double lo = std::min(x0, x1), hi = std::max(x0, x1);
    i64 first = (i64)std::floor(lo + 0.5) - 1, last = (i64)std::floor(hi + 0.5) + 1;  // a margin of one plane
    first = std::max<i64>(first, 0); last = std::min<i64>(last, n);
    if (first > last) return;
    if (d > 0) { A.p = first; A.pend = last + 1; } else { A.p = last; A.pend = first - 1; }
    // skip crossings at or before s_near (they are clamped to s_near in the reference)
    while (A.p != A.pend) {
        const double a = ((double)A.p - 0.5 - o) / d;
        if (a > s_near) { A.next = a; return; }
        A.p += A.step;
    }
}

inline void sid_axis_advance(SidAxis& A) {
    A.p += A.step;
    A.next = A.p != A.pend ? ((double)A.p - 0.5 - A.o) / A.d : INFINITY;
}

inline i64 sid_voxel(double o, double d, double s, i64 n) {
    i64 i = (i64)std::nearbyint(o + s * d);  // round half to even, as torch.round
    return i < 0 ? 0 : (i > n - 1 ? n - 1 : i);
}

// S[b, c, r] = sum over pieces of mu_c(voxel) * length in s.  With gS given (backward):
// per ray gO, gD (through the interior crossings), gN, gF (d/ds_near, d/ds_far), gvol.
template <typename G, typename V>
void siddon(const V* vol, const Vol& VV, const G* origin, const G* dir, const G* near_,
            const G* far_, i64 B, i64 R, G* out, const G* gS, G* gO, G* gD, G* gN, G* gF, V* gvol, int nthreads,
            i64 c0 = 0) {
    // forward: channels c0 .. c0 + CMAX - 1 only (the caller loops over channel blocks)
    const i64 C = VV.C, I = VV.I, J = VV.J, K = VV.K, SC = VV.sc, total = B * R;
    const bool bwd = gS != nullptr, geo = gO != nullptr;
parallel_for(total, nthreads, [&](i64 it) {
        const i64 ray = VV.order ? (it / R) * R + VV.order[it] : it;
        const i64 b = ray / R, r = ray - b * R;
        const double o[3] = {(double)origin[3 * b], (double)origin[3 * b + 1], (double)origin[3 * b + 2]};
        const double d[3] = {(double)dir[3 * ray], (double)dir[3 * ray + 1], (double)dir[3 * ray + 2]};
        const double sn = near_[ray], sf = far_[ray];
        double acc[CMAX] = {0, 0, 0, 0, 0, 0, 0, 0};
        const int nc = (int)std::min<i64>(C - c0, CMAX);
        if (bwd) {
            bool any = false;
            for (i64 c = 0; c < C; ++c) any |= gS[(b * C + c) * R + r] != 0;
            if (!any) {
                if (geo) {
                    for (int q = 0; q < 3; ++q) { gO[3 * ray + q] = 0; gD[3 * ray + q] = 0; }
                    gN[ray] = 0; gF[ray] = 0;
                }
                return;
            }
        }
        auto voxel = [&](double s) {
            return sid_voxel(o[0], d[0], s, I) * VV.si + sid_voxel(o[1], d[1], s, J) * VV.sj +
                   sid_voxel(o[2], d[2], s, K) * VV.sk;
        };
        // w(v) = sum_c gS_c mu_c(v): the backward's weight of a voxel
        auto weight = [&](i64 v) {
            double w = 0;
            for (i64 c = 0; c < C; ++c) w += (double)gS[(b * C + c) * R + r] * (double)vol[c * SC + v];
            return w;
        };
        double go[3] = {0, 0, 0}, gd[3] = {0, 0, 0}, gn = 0, gf = 0;
        if (!(sf > sn)) {
            if (bwd && geo) {
                const double w = weight(voxel(sn));
                gn = -w; gf = w;
            }
        } else {
            SidAxis A[3];
            sid_axis_init(A[0], o[0], d[0], I, sn, sf);
            sid_axis_init(A[1], o[1], d[1], J, sn, sf);
            sid_axis_init(A[2], o[2], d[2], K, sn, sf);
            double cur = sn;
            double wprev = 0;
            bool first = true;
            int pax_ = 0;  // axis of the crossing at cur
            while (true) {
                int ax = 0;
                if (A[1].next < A[ax].next) ax = 1;
                if (A[2].next < A[ax].next) ax = 2;
                const bool end = !(A[ax].next < sf);
                const double nxt = end ? sf : A[ax].next;
                const double seg = nxt - cur;
                const i64 v = voxel(0.5 * (cur + nxt));
                if (!bwd) {
                    if (seg > 0)
                        for (int c = 0; c < nc; ++c) acc[c] += seg * (double)vol[(c0 + c) * SC + v];
                } else {
                    if (geo) {
                        const double w = weight(v);
                        if (first) { gn = -w; first = false; }
                        else {
                            // crossing at cur of axis pax: coefficient w_prev - w; dalpha/do = -1/d, dalpha/dd = -alpha/d
                            const double kappa = wprev - w;
                            go[pax_] -= kappa / d[pax_];
                            gd[pax_] -= kappa * cur / d[pax_];
                        }
                        wprev = w;
                        if (end) gf = w;
                    }
                    if (gvol != nullptr && seg > 0)
                        for (i64 c = 0; c < C; ++c) {
                            const double gc = (double)gS[(b * C + c) * R + r];
                            if (gc != 0) atomic_add(gvol + c * SC + v, gc * seg);
                        }
                }
                if (end) break;
                pax_ = ax;
                cur = nxt;
                sid_axis_advance(A[ax]);
            }
        }
        if (!bwd) {
            for (int c = 0; c < nc; ++c) out[(b * C + c0 + c) * R + r] = (G)acc[c];
        } else if (geo) {
            for (int q = 0; q < 3; ++q) { gO[3 * ray + q] = (G)go[q]; gD[3 * ray + q] = (G)gd[q]; }
            gN[ray] = (G)gn; gF[ray] = (G)gf;
        }
    });
}

}  // namespace

extern "C" {

int xrp_abi_version() { return 10; }

// How the AVX2 path reads corners: a mask of LOADS_PAIRS (1) and LOADS_QUADS (2), 0 = gathers
// everywhere; a negative mode changes nothing.  Returns the mask in force.
int xrp_set_corner_loads(int mode) {
    if (mode >= 0) g_corner_loads.store(mode & (LOADS_PAIRS | LOADS_QUADS));
    return g_corner_loads.load();
}

// 1 when the library has the AVX2 path (corner-load modes matter), else 0.
int xrp_has_avx2() {
#ifdef XRP_AVX2
    return 1;
#else
    return 0;
#endif
}

}  // extern "C"

namespace {
// float32 geometry and every offset (channel, corner) below 2^31: the vectorised fast path
template <typename G>
bool fast32(const Vol& v) {
    if (!std::is_same<G, float>::value) return false;
    const i64 top = (v.C - 1) * v.sc + (v.I - 1) * v.si + (v.J - 1) * v.sj + (v.K - 1) * v.sk;
    return v.sc >= 0 && v.si >= 0 && v.sj >= 0 && v.sk >= 0 && top < ((i64)1 << 31) - 1;
}

// ---------------------------------------------------------------- fused rays (float32 poses)
// Ray generation and clipping in the kernel, as render() + rays.py + clip_to_box do them:
//   q = sdd K^-1 (u, v, 1) (camera frame), source = t, target = R q + t (world),
//   origin o = A t + c, direction d = A R q, length L = |R q| (A, c: world -> index),
//   [s_near, s_far] = slab clip of o + s d to the box [lo, hi], clamped to [0, 1].
// geo (B, R, GEO) keeps, per ray: d (3), L, s_near, s_far, the entering and leaving
// axes (-1: no gradient: clamped or parallel), q (3), R q (3).  origin (B, 3).
constexpr int GEO = 14;

template <typename G>
void rays_geo(const G* pose, const double* w2i, const double* kinv, double sdd, const G* uv, i64 uv_bstride,
              const double* box, i64 B, i64 R, double eps, double* geo, double* origin, int nthreads) {
    for (i64 b = 0; b < B; ++b) {
        const G* P = pose + 16 * b;
        for (int i = 0; i < 3; ++i) {
            double v = w2i[4 * i + 3];
            for (int j = 0; j < 3; ++j) v += w2i[4 * i + j] * (double)P[4 * j + 3];
            origin[3 * b + i] = v;
        }
    }
    parallel_for(B * R, nthreads, [&](i64 ray) {
        const i64 b = ray / R, r = ray - b * R;
        const G* P = pose + 16 * b;
        const double u = (double)uv[b * uv_bstride + 2 * r], v = (double)uv[b * uv_bstride + 2 * r + 1];
        double q[3], rq[3], d[3];
        for (int i = 0; i < 3; ++i) q[i] = sdd * (kinv[3 * i] * u + kinv[3 * i + 1] * v + kinv[3 * i + 2]);
        for (int i = 0; i < 3; ++i) rq[i] = (double)P[4 * i] * q[0] + (double)P[4 * i + 1] * q[1] + (double)P[4 * i + 2] * q[2];
        for (int i = 0; i < 3; ++i) d[i] = w2i[4 * i] * rq[0] + w2i[4 * i + 1] * rq[1] + w2i[4 * i + 2] * rq[2];
        const double L = std::sqrt(rq[0] * rq[0] + rq[1] * rq[1] + rq[2] * rq[2]);
        const double* o = origin + 3 * b;
        double tmin = -INFINITY, tmax = INFINITY;
        int amin = -1, amax = -1;
        for (int i = 0; i < 3; ++i) {
            const double lo = box[i], hi = box[3 + i];
            double t0, t1;
            if (std::fabs(d[i]) < eps) {  // parallel to the slab: inside, no constraint; outside, a miss
                const bool inside = o[i] >= lo && o[i] <= hi;
                t0 = inside ? -INFINITY : INFINITY;
                t1 = inside ? INFINITY : -INFINITY;
                if (t0 > tmin) { tmin = t0; amin = -1; }
                if (t1 < tmax) { tmax = t1; amax = -1; }
                continue;
            }
            const double ta = (lo - o[i]) / d[i], tb = (hi - o[i]) / d[i];
            t0 = std::min(ta, tb); t1 = std::max(ta, tb);
            if (t0 > tmin) { tmin = t0; amin = i; }
            if (t1 < tmax) { tmax = t1; amax = i; }
        }
        // clamp to [0, 1]; the gradient passes only where the clamp is inactive (0 <= t <= 1)
        double sn = tmin, sf = tmax;
        if (!(sn >= 0.0 && sn <= 1.0)) { amin = -1; sn = sn < 0.0 ? 0.0 : (sn > 1.0 ? 1.0 : sn); }
        if (!(sf >= 0.0 && sf <= 1.0)) { amax = -1; sf = sf < 0.0 ? 0.0 : (sf > 1.0 ? 1.0 : sf); }
        double* g = geo + GEO * ray;
        g[0] = d[0]; g[1] = d[1]; g[2] = d[2]; g[3] = L; g[4] = sn; g[5] = sf;
        g[6] = (double)amin; g[7] = (double)amax; g[8] = q[0]; g[9] = q[1]; g[10] = q[2];
        g[11] = rq[0]; g[12] = rq[1]; g[13] = rq[2];
    });
}

// Cache-friendly tracing order per pose (see cpu.py cache_order): rays bucketed 2 voxels
// wide across the image along e2, sorted along e1 (the volume's k axis, made
// perpendicular to the mean ray) within a bucket.
inline void cache_order_geo(const double* geo, const double* origin, i64 B, i64 R, i64* order, int nthreads) {
    parallel_for(B, nthreads, [&](i64 b) {
        const double* o = origin + 3 * b;
        double m[3] = {0, 0, 0};
        for (i64 r = 0; r < R; ++r)
            for (int i = 0; i < 3; ++i) m[i] += geo[GEO * (b * R + r) + i];
        double n = std::sqrt(m[0] * m[0] + m[1] * m[1] + m[2] * m[2]);
        if (!(n > 0)) n = 1;
        for (int i = 0; i < 3; ++i) m[i] /= n;
        double e1[3] = {-m[2] * m[0], -m[2] * m[1], 1.0 - m[2] * m[2]};  // k - (k.m) m
        double n1 = std::sqrt(e1[0] * e1[0] + e1[1] * e1[1] + e1[2] * e1[2]);
        if (n1 < 0.1) {  // looking along k: use j
            e1[0] = -m[1] * m[0]; e1[1] = 1.0 - m[1] * m[1]; e1[2] = -m[1] * m[2];
            n1 = std::sqrt(e1[0] * e1[0] + e1[1] * e1[1] + e1[2] * e1[2]);
        }
        for (int i = 0; i < 3; ++i) e1[i] /= n1;
        const double e2[3] = {m[1] * e1[2] - m[2] * e1[1], m[2] * e1[0] - m[0] * e1[2], m[0] * e1[1] - m[1] * e1[0]};
        std::vector<std::pair<std::pair<double, double>, i64>> key(R);
        for (i64 r = 0; r < R; ++r) {
            const double* g = geo + GEO * (b * R + r);
            const double sm = 0.5 * (g[4] + std::max(g[5], g[4]));
            double a1 = 0, a2 = 0;
            for (int i = 0; i < 3; ++i) {
                const double x = o[i] + sm * g[i];
                a1 += x * e1[i]; a2 += x * e2[i];
            }
            key[r] = {{std::floor(a2 / 2.0), a1}, r};
        }
        std::sort(key.begin(), key.end());
        for (i64 r = 0; r < R; ++r) order[b * R + r] = key[r].second;
    });
}

// Backward of the fused trilinear render, without touching the volume: per ray, from the
// forward's raw sums F (B, C, R) and sample-gradient sums jac (B, C, R, 6), the gradient
// of sum gout * out with respect to the pose, out = F span L / N.  gpose (B, R, 12):
// d/dR (row-major 3x3) then d/dt, to be summed over rays.
template <typename G>
void tri_fused_bwd(const double* geo, const double* w2i, i64 B, i64 R, i64 C, i64 N, const G* gout, const G* F,
                   const G* jac, double* gpose, int nthreads) {
    parallel_for(B * R, nthreads, [&](i64 ray) {
        const i64 b = ray / R, r = ray - b * R;
        const double* g = geo + GEO * ray;
        const double d[3] = {g[0], g[1], g[2]}, L = g[3], a = g[4], bb = g[5];
        const double span = bb - a > 0 ? bb - a : 0.0;
        const int ax_a = (int)g[6], ax_b = (int)g[7];
        const double q[3] = {g[8], g[9], g[10]};
        double G1[3] = {0, 0, 0}, G2[3] = {0, 0, 0}, FL = 0;
        for (i64 c = 0; c < C; ++c) {
            const i64 idx = (b * C + c) * R + r;
            const double go = (double)gout[idx];
            FL += go * (double)F[idx];
            const double gF = go * span * L / (double)N;
            const G* J = jac + 6 * idx;
            for (int i = 0; i < 3; ++i) { G1[i] += gF * (double)J[i]; G2[i] += gF * (double)J[3 + i]; }
        }
        double go_[3], gd[3];
        for (int i = 0; i < 3; ++i) { go_[i] = G1[i]; gd[i] = a * G1[i] + span * G2[i]; }
        double ga = G1[0] * d[0] + G1[1] * d[1] + G1[2] * d[2];
        double gspan = G2[0] * d[0] + G2[1] * d[1] + G2[2] * d[2] + FL * L / (double)N;
        const double gL = FL * span / (double)N;
        double gb = 0;
        if (bb - a >= 0) { gb += gspan; ga -= gspan; }  // span = clamp_min(b - a, 0)
        if (ax_a >= 0) { go_[ax_a] -= ga / d[ax_a]; gd[ax_a] -= ga * a / d[ax_a]; }
        if (ax_b >= 0) { go_[ax_b] -= gb / d[ax_b]; gd[ax_b] -= gb * bb / d[ax_b]; }
        // d = A R q, L = |R q|, o = A t + c
        double At_gd[3], At_go[3];
        for (int j = 0; j < 3; ++j) {
            At_gd[j] = w2i[j] * gd[0] + w2i[4 + j] * gd[1] + w2i[8 + j] * gd[2];
            At_go[j] = w2i[j] * go_[0] + w2i[4 + j] * go_[1] + w2i[8 + j] * go_[2];
        }
        // gR = (A^T gd + gL R q / L) q^T
        const double* rq = g + 11;
        const double w = L > 0 ? gL / L : 0.0;
        double* out = gpose + 12 * ray;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) out[3 * i + j] = (At_gd[i] + w * rq[i]) * q[j];
        for (int i = 0; i < 3; ++i) out[9 + i] = At_go[i];
    });
}

}  // namespace

extern "C" {

// vs: the volume's shape and element strides, {C, I, J, K, stride_c, stride_i, stride_j, stride_k};
// gvol (when given) has the same strides.
#define XRP_DEFINE(GN, G, VN, V)                                                                              \
    /* returns 1 when jac (B, C, R, 6) was filled (float32 fast path), else 0 */                          \
    int xrp_tri_fwd_##GN##_##VN(const V* vol, const i64* vs, const i64* order, const G* o, const G* d, const G* a, const G* s,  \
                                  i64 B, i64 R, i64 N, G* out, G* jac, const uint8_t* occ, const i64* os, int nt) { \
        const Vol v = make_vol(vs, order, occ, os);                                                           \
        if (fast32<G>(v)) {                                                                                   \
            const float *of = (const float*)o, *df = (const float*)d, *af = (const float*)a;                  \
            const float* sf = (const float*)s;                                                                \
            auto get = [&](i64 ray, i64 b, double* ov, double* dv, double& s0, double& sp, double& scale) {   \
                for (int q = 0; q < 3; ++q) { ov[q] = of[3 * b + q]; dv[q] = df[3 * ray + q]; }               \
                s0 = af[ray]; sp = sf[ray]; scale = 1.0;                                                      \
            };                                                                                                \
            tri_fwd_f32<V>(vol, v, get, B, R, N, (float*)out, nullptr, (float*)jac, nt);                      \
            return jac != nullptr;                                                                            \
        }                                                                                                     \
        tri_fwd<G, V>(vol, v, o, d, a, s, B, R, N, out, nt);                                                  \
        return 0;                                                                                             \
    }                                                                                                         \
    void xrp_tri_bwd_##GN##_##VN(const V* vol, const i64* vs, const i64* order, const G* o, const G* d, const G* a, const G* s, \
                                   i64 B, i64 R, i64 N, const G* gF, G* gO, G* gD, G* gA, G* gS, V* gvol,     \
                                   const uint8_t* occ, const i64* os, int nt) {                               \
        const Vol v = make_vol(vs, order, gvol == nullptr ? occ : nullptr, os);                               \
        if (gvol == nullptr && gO != nullptr && fast32<G>(v))                                                 \
            tri_bwd_f32<V>(vol, v, (const float*)o, (const float*)d, (const float*)a, (const float*)s, B, R, N, \
                           (const float*)gF, (float*)gO, (float*)gD, (float*)gA, (float*)gS, nt);             \
        else tri_bwd<G, V>(vol, v, o, d, a, s, B, R, N, gF, gO, gD, gA, gS, gvol, nt);                        \
    }                                                                                                         \
    void xrp_sid_fwd_##GN##_##VN(const V* vol, const i64* vs, const i64* order, const G* o, const G* d, const G* sn,            \
                                   const G* sf, i64 B, i64 R, G* out, int nt) {                               \
        const Vol v = make_vol(vs, order);                                                                           \
        for (i64 c0 = 0; c0 < v.C; c0 += CMAX)                                                                \
            siddon<G, V>(vol, v, o, d, sn, sf, B, R, out, nullptr, nullptr, nullptr, nullptr, nullptr,        \
                         nullptr, nt, c0);                                                                    \
    }                                                                                                         \
    void xrp_sid_bwd_##GN##_##VN(const V* vol, const i64* vs, const i64* order, const G* o, const G* d, const G* sn,            \
                                   const G* sf, i64 B, i64 R, const G* gS, G* gO, G* gD, G* gN, G* gF,        \
                                   V* gvol, int nt) {                                                         \
        siddon<G, V>(vol, make_vol(vs, order), o, d, sn, sf, B, R, nullptr, gS, gO, gD, gN, gF, gvol, nt);           \
    }

XRP_DEFINE(f32, float, f32, float)
XRP_DEFINE(f64, double, f32, float)
XRP_DEFINE(f32, float, f64, double)
XRP_DEFINE(f64, double, f64, double)

// Fused float32 path: rays from poses in the kernel (see rays_geo).
void xrp_rays_f32(const float* pose, const double* w2i, const double* kinv, double sdd, const float* uv,
                  i64 uv_bstride, const double* box, i64 B, i64 R, double eps, double* geo, double* origin,
                  i64* order, int nt) {
    rays_geo<float>(pose, w2i, kinv, sdd, uv, uv_bstride, box, B, R, eps, geo, origin, nt);
    if (order != nullptr) cache_order_geo(geo, origin, B, R, order, nt);
}

#define XRP_FUSED(VN, V)                                                                                      \
    /* returns 0 when the volume does not fit the 32-bit fast path (nothing done) */                         \
    int xrp_tri_fused_fwd_f32_##VN(const V* vol, const i64* vs, const i64* order, const double* geo,          \
                                     const double* origin, i64 B, i64 R, i64 N, float* out, float* raw,       \
                                     float* jac, const uint8_t* occ, const i64* occ_shape, int nt) {          \
        const Vol v = make_vol(vs, order, occ, occ_shape);                                                    \
        if (!fast32<float>(v)) return 0;                                                                      \
        auto get = [&](i64 ray, i64 b, double* ov, double* dv, double& s0, double& sp, double& scale) {       \
            const double* g = geo + GEO * ray;                                                                \
            for (int q = 0; q < 3; ++q) { ov[q] = origin[3 * b + q]; dv[q] = g[q]; }                          \
            s0 = g[4]; sp = g[5] - g[4] > 0 ? g[5] - g[4] : 0.0; scale = sp * g[3] / (double)N;              \
        };                                                                                                    \
        tri_fwd_f32<V>(vol, v, get, B, R, N, out, raw, jac, nt);                                              \
        return 1;                                                                                             \
    }

XRP_FUSED(f32, float)
XRP_FUSED(f64, double)

void xrp_tri_fused_bwd_f32(const double* geo, const double* w2i, i64 B, i64 R, i64 C, i64 N, const float* gout,
                           const float* F, const float* jac, double* gpose, int nt) {
    tri_fused_bwd<float>(geo, w2i, B, R, C, N, gout, F, jac, gpose, nt);
}

}  // extern "C"
