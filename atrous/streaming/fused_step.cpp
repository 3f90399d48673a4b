// Streaming steps of a lowered dilated model, fused into a single C++ call.
//
// The Python side (atrous/streaming/program.py) lowers a model into a flat list of ops over one
// float workspace row per stream; this file runs that list for a batch of streams and any number
// of ticks, each op at the ticks of its clock (strided layers once per frame, the phases of an
// upsampling layer each at its own tick). Each causal convolution keeps its last (k - 1) * d
// inputs in a ring buffer (the queues of Paine et al. 2016, "Fast WaveNet generation
// algorithm"), so a step costs one sample's work per layer. Streams are independent, so the
// batch is split across threads once per call and no thread waits for another inside a step.
//
// Arithmetic is plain float32 with GCC vector extensions (AVX-512, AVX2 or NEON, whatever the
// compiler targets); the result matches the offline forward up to float rounding. The file has
// no PyTorch headers: it builds in seconds into a shared library called through ctypes with raw
// pointers (atrous/streaming/fused.py), and OpenMP threads come from the runtime PyTorch loaded.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t i16 __attribute__((vector_size(64)));

// Codes and layouts defined in atrous/streaming/opset.py (what each means is documented there);
// tests/streaming/test_opset.py fails when a name or value here differs from it.
enum OpCode : int64_t {
  LINEAR = 0, CONV = 1, ACT = 2, GATE = 3, ADD = 4, EMBED = 5, PRELU = 6, GLU = 7, LAYER_NORM = 8, PUSH = 9, TAPS = 10,
  READ = 11, MUL = 12, MAX = 13, SOFTMAX = 14, LOG_SOFTMAX = 15
};
enum ActKind : int64_t {
  IDENTITY = 0, RELU = 1, TANH = 2, SIGMOID = 3, GELU = 4, SILU = 5, ELU = 6, GELU_TANH = 7, SOFTPLUS = 8
};
enum IdSource : int64_t { IDS_INPUT = 0, IDS_GLOBAL = 1 };
enum Field {
  CODE, SRC, SRC_WIDTH, DST, DST_WIDTH, INIT, WEIGHT, BIAS, RING, KERNEL_SIZE, DILATION, ARG, START, PERIOD, LAG, NFIELDS
};
enum ConfigSlot {
  CONFIG_OPS, CONFIG_N_OPS, CONFIG_WEIGHTS, CONFIG_WEIGHT_ROWS, CONFIG_RINGS, CONFIG_WORK, CONFIG_BATCH,
  CONFIG_WIDTH, CONFIG_X_CHANNELS, CONFIG_X_OFFSET, CONFIG_LOCAL_CHANNELS, CONFIG_LOCAL_OFFSET,
  CONFIG_OUT_CHANNELS, CONFIG_OUT_OFFSET, CONFIG_RING_LAYOUT, CONFIG_TICKS, CONFIG_OUT_START, CONFIG_OUT_PERIOD
};
enum CallSlot {
  CALL_X, CALL_IDS, CALL_LOCAL, CALL_GLOBAL_IDS, CALL_OUT, CALL_STEPS, CALL_START, CALL_THREADS, CALL_BAD_ID,
  CALL_X_LENGTH, CALL_X_FIRST, CALL_OUT_LENGTH, CALL_OUT_FIRST
};
enum Status : int { STATUS_OK = 0, STATUS_BAD_INPUT_ID = 1, STATUS_BAD_GLOBAL_ID = 2 };

inline v16 load(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void store(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }
inline v16 splat(float s) { return v16{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }

// exp with Cody-Waite range reduction and a degree-5 polynomial (Cephes expf, ~1 ulp).
inline v16 vexp(v16 x) {
  x = x < splat(87.0f) ? x : splat(87.0f);  // 2^n stays finite, and a product of two such exps too
  x = x > splat(-87.33654f) ? x : splat(-87.33654f);
  const v16 magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to the nearest integer
  v16 shifted = x * splat(1.44269504088896341f) + magic;
  v16 n = shifted - magic;
  v16 r = x - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
  v16 p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  i16 bits = (__builtin_convertvector(n, i16) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline v16 vsigmoid(v16 x) { return splat(1.0f) / (splat(1.0f) + vexp(-x)); }

// tanh: an odd polynomial near 0 (Cephes tanhf), 1 - 2 / (exp(2|x|) + 1) elsewhere.
inline v16 vtanh(v16 x) {
  v16 ax = x < splat(0.0f) ? -x : x;
  v16 big = splat(1.0f) - splat(2.0f) / (vexp(splat(2.0f) * ax) + splat(1.0f));
  big = x < splat(0.0f) ? -big : big;
  v16 z = x * x;
  v16 small = splat(-5.70498872745e-3f);
  small = small * z + splat(2.06390887954e-2f);
  small = small * z - splat(5.37397155531e-2f);
  small = small * z + splat(1.33314422036e-1f);
  small = small * z - splat(3.33332819422e-1f);
  small = small * z * x + x;
  return ax > splat(0.625f) ? big : small;
}

// tanh(a) * sigmoid(b) = sign(a) (1 - e_a) / ((1 + e_a) (1 + e_b)), e_a = exp(-2|a|), e_b = exp(-b):
// one division instead of two; the absolute error stays near float epsilon.
inline v16 vgate(v16 a, v16 b) {
  const v16 ea = vexp(splat(-2.0f) * (a < splat(0.0f) ? -a : a)), eb = vexp(-b);
  const v16 z = (splat(1.0f) - ea) / ((splat(1.0f) + ea) * (splat(1.0f) + eb));
  return a < splat(0.0f) ? -z : z;
}

inline v16 activate(v16 x, int64_t kind) {
  switch (kind) {
    case RELU: return x > splat(0.0f) ? x : splat(0.0f);
    case TANH: return vtanh(x);
    case SIGMOID: return vsigmoid(x);
    case SILU: return x * vsigmoid(x);
    case ELU: return x > splat(0.0f) ? x : vexp(x) - splat(1.0f);
    case GELU: {
      float tmp[16];
      store(tmp, x);
      for (float& v : tmp) v = 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
      return load(tmp);
    }
    case GELU_TANH: return splat(0.5f) * x * (splat(1.0f) + vtanh(splat(0.79788456080286536f) *
                                                                   (x + splat(0.044715f) * x * x * x)));
    case SOFTPLUS: {  // log(1 + exp(x)), x itself above 20 (PyTorch's threshold)
      float tmp[16];
      store(tmp, x);
      for (float& v : tmp) v = v > 20.0f ? v : std::log1p(std::exp(v));
      return load(tmp);
    }
    case IDENTITY:
    default: return x;  // every kind is checked on the Python side
  }
}

// dst[0:n] = f(src[0:n]) for n floats, 16 at a time, the tail through a padded copy.
template <typename F>
inline void map16(const float* src, float* dst, int64_t n, F f) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) store(dst + i, f(load(src + i)));
  if (i < n) {
    float tmp[16] = {0};
    std::memcpy(tmp, src + i, (n - i) * sizeof(float));
    store(tmp, f(load(tmp)));
    std::memcpy(dst + i, tmp, (n - i) * sizeof(float));
  }
}

// y[r, n0:n0+16*NV] += x[r, :] @ w[:, n0:n0+16*NV] for R rows, accumulators held in registers.
template <int R, int NV>
inline void gemm_block(const float* x, int64_t ldx, const float* w, int64_t K, int64_t N, float* y, int64_t ldy) {
  v16 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = load(y + r * ldy + 16 * v);
  for (int64_t k = 0; k < K; ++k) {
    const float* wk = w + k * N;
    v16 wv[NV];
    for (int v = 0; v < NV; ++v) {
      wv[v] = load(wk + 16 * v);
#if defined(__AVX512F__)
      asm("" : "+v"(wv[v]));  // keep the weights in registers: one load serves R rows
#endif
    }
    for (int r = 0; r < R; ++r) {
      const v16 xv = splat(x[r * ldx + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] += xv * wv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) store(y + r * ldy + 16 * v, acc[r][v]);
}

// y[r, :N] += x[r, :K] @ w[K, N] for rows r < rows (row strides ldx, ldy; w row-major).
template <int R>
void gemm_rows(const float* x, int64_t ldx, const float* w, int64_t K, int64_t N, float* y, int64_t ldy) {
  int64_t n = 0;
  if (R == 1) {
    for (; n + 128 <= N; n += 128) gemm_block<1, 8>(x, ldx, w + n, K, N, y + n, ldy);
  }
  for (; n + 64 <= N; n += 64) gemm_block<R, 4>(x, ldx, w + n, K, N, y + n, ldy);
  for (; n + 16 <= N; n += 16) gemm_block<R, 1>(x, ldx, w + n, K, N, y + n, ldy);
  for (; n < N; ++n)
    for (int r = 0; r < R; ++r) {
      float acc = y[r * ldy + n];
      for (int64_t k = 0; k < K; ++k) acc += x[r * ldx + k] * w[k * N + n];
      y[r * ldy + n] = acc;
    }
}

void gemm_acc(const float* x, int64_t ldx, const float* w, int64_t K, int64_t N, float* y, int64_t ldy,
              int64_t rows) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) gemm_rows<4>(x + r * ldx, ldx, w, K, N, y + r * ldy, ldy);
  for (; r < rows; ++r) gemm_rows<1>(x + r * ldx, ldx, w, K, N, y + r * ldy, ldy);
}

struct Inputs {
  const float* x;          // (B, x_channels, x_length) float input, or null
  int64_t x_channels, x_off;
  const int64_t* ids;      // (B, x_length) class ids, or null
  const float* local;      // (B, local_channels, x_length), or null
  int64_t local_channels, local_off;
  const int64_t* gids;     // (B,) global condition ids, or null
  float* out;              // (B, out_channels, out_length)
  int64_t out_channels, out_off;
  int64_t x_length, x_first;      // column 0 of x is input sample x_first
  int64_t out_length, out_first;  // column 0 of out is output sample out_first
  int64_t ticks, out_start, out_period;  // ticks per input sample; the output's clock
};

struct Rings {
  float* const* data;     // (samples, B, C) each
  const int64_t* layout;  // (start, period, samples) each
  int64_t batch;
  // the slot of sample `index` of ring r (indices before 0 hold zeros: the left padding)
  float* slot(int64_t r, int64_t index, int64_t channels) const {
    const int64_t samples = layout[3 * r + 2];
    return data[r] + ((index % samples + samples) % samples) * batch * channels;
  }
  // the newest sample of ring r written by tick `tick`
  int64_t newest(int64_t r, int64_t tick) const { return (tick - layout[3 * r]) / layout[3 * r + 1]; }
};

// One tick for stream rows [r0, r1).
void step_rows(const int64_t* ops, int64_t n_ops, const float* const* weights, const int64_t* weight_rows,
               const Rings rings, float* work_all, int64_t width, const Inputs& in, int64_t r0, int64_t r1,
               int64_t tick) {
  const int64_t W = width, rows = r1 - r0, T = in.x_length;
  float* work = work_all + r0 * W;
  int64_t t = -1;  // the input column of this tick, if an input sample comes in at it
  if (tick % in.ticks == 0) {
    t = tick / in.ticks - in.x_first;
    auto copy_in = [&](const float* seq, int64_t C, int64_t off) {
      const bool inside = t >= 0 && t < T;
      for (int64_t b = r0; b < r1; ++b)
        for (int64_t c = 0; c < C; ++c) work[(b - r0) * W + off + c] = inside ? seq[(b * C + c) * T + t] : 0.0f;
    };
    if (in.x) copy_in(in.x, in.x_channels, in.x_off);
    if (in.local) copy_in(in.local, in.local_channels, in.local_off);
  }
  const int64_t* op = ops;
  for (int64_t i = 0; i < n_ops; ++i, op += NFIELDS) {
    if (tick < op[START]) continue;
    int64_t n = tick - op[START];  // the op's run index
    if (op[PERIOD] != 1) {
      if (n % op[PERIOD]) continue;
      n /= op[PERIOD];
    }
    float* dst = work + op[DST];
    const float* src = work + op[SRC];
    const int64_t K = op[SRC_WIDTH], N = op[DST_WIDTH];
    switch (op[CODE]) {
      case LINEAR:
      case CONV:
      case TAPS: {
        const float* bias = op[BIAS] >= 0 ? weights[op[BIAS]] : nullptr;
        const float* init = op[INIT] >= 0 ? work + op[INIT] : nullptr;
        for (int64_t r = 0; r < rows; ++r) {  // dst = init + bias, then the products accumulate
          float* d = dst + r * W;
          if (init && bias) {
            for (int64_t c = 0; c < N; ++c) d[c] = init[r * W + c] + bias[c];
          } else if (init || bias) {
            std::memcpy(d, init ? init + r * W : bias, N * sizeof(float));
          } else {
            std::memset(d, 0, N * sizeof(float));
          }
        }
        const float* w = weights[op[WEIGHT]];
        if (op[CODE] == CONV) {
          const int64_t k = op[KERNEL_SIZE], d = op[DILATION], L = (k - 1) * d;  // the ring holds the past only
          float* ring = rings.data[op[RING]] + r0 * K;  // (L, B, K): x[n] of every stream in slot n % L
          const int64_t slot_size = rings.batch * K;
          for (int64_t m = k - 1; m >= 1; --m) {  // tap k - 1 - m holds x[n - m d]
            const int64_t slot = ((n - m * d) % L + L) % L;
            gemm_acc(ring + slot * slot_size, K, w + (k - 1 - m) * K * N, K, N, dst, W, rows);
          }
          gemm_acc(src, W, w + (k - 1) * K * N, K, N, dst, W, rows);
          float* slot = ring + (n % L) * slot_size;  // written after the reads: for k = 2 it was just read
          for (int64_t r = 0; r < rows; ++r) std::memcpy(slot + r * K, src + r * W, K * sizeof(float));
        } else if (op[CODE] == TAPS) {  // all k taps from the ring, the newest `lag` samples back
          const int64_t k = op[KERNEL_SIZE], d = op[DILATION], C = weight_rows[op[WEIGHT]] / k;
          const int64_t newest = rings.newest(op[RING], tick) - op[LAG];
          for (int64_t m = 0; m < k; ++m)
            gemm_acc(rings.slot(op[RING], newest - (k - 1 - m) * d, C) + r0 * C, C, w + m * C * N, C, N, dst, W, rows);
        } else {
          gemm_acc(src, W, w, K, N, dst, W, rows);
        }
        break;
      }
      case PUSH: {  // ring[n] = src; the ring's clock is this op's
        float* slot = rings.slot(op[RING], n, K) + r0 * K;
        for (int64_t r = 0; r < rows; ++r) std::memcpy(slot + r * K, src + r * W, K * sizeof(float));
        break;
      }
      case MAX: {  // dst = the maximum of the k taps, as TAPS reads them
        const int64_t k = op[KERNEL_SIZE], d = op[DILATION], newest = rings.newest(op[RING], tick) - op[LAG];
        for (int64_t m = 0; m < k; ++m) {
          const float* slot = rings.slot(op[RING], newest - (k - 1 - m) * d, N) + r0 * N;
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < N; ++c)
              dst[r * W + c] = m == 0 ? slot[r * N + c] : std::max(dst[r * W + c], slot[r * N + c]);
        }
        break;
      }
      case READ: {  // dst = ring[newest - lag]
        const float* slot = rings.slot(op[RING], rings.newest(op[RING], tick) - op[LAG], N) + r0 * N;
        for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * W, slot + r * N, N * sizeof(float));
        break;
      }
      case ACT: {
        const int64_t kind = op[ARG];
        for (int64_t r = 0; r < rows; ++r)
          map16(src + r * W, dst + r * W, N, [kind](v16 v) { return activate(v, kind); });
        break;
      }
      case GATE: {  // dst[0:N] = tanh(src[0:N]) * sigmoid(src[N:2N])
        for (int64_t r = 0; r < rows; ++r) {
          float* z = dst + r * W;
          const float *a = src + r * W, *g = a + N;
          int64_t c = 0;
          for (; c + 16 <= N; c += 16) store(z + c, vgate(load(a + c), load(g + c)));
          for (; c < N; ++c) z[c] = std::tanh(a[c]) / (1.0f + std::exp(-g[c]));
        }
        break;
      }
      case ADD:
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < N; ++c) dst[r * W + c] = src[r * W + c] + work[r * W + op[INIT] + c];
        break;
      case MUL:
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < N; ++c) dst[r * W + c] = src[r * W + c] * work[r * W + op[INIT] + c];
        break;
      case PRELU: {  // dst = src > 0 ? src : weight * src, a slope per column
        const float* slope = weights[op[WEIGHT]];
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < N; ++c) {
            const float v = src[r * W + c];
            dst[r * W + c] = v > 0.0f ? v : slope[c] * v;
          }
        break;
      }
      case GLU: {  // dst[0:N] = src[0:N] * sigmoid(src[N:2N])
        for (int64_t r = 0; r < rows; ++r) {
          float* z = dst + r * W;
          const float *a = src + r * W, *g = a + N;
          int64_t c = 0;
          for (; c + 16 <= N; c += 16) store(z + c, load(a + c) * vsigmoid(load(g + c)));
          for (; c < N; ++c) z[c] = a[c] / (1.0f + std::exp(-g[c]));
        }
        break;
      }
      case LAYER_NORM: {  // over the N columns of each row; weight = [scale (N), shift (N), eps]
        const float *scale = weights[op[WEIGHT]], *shift = scale + N, eps = scale[2 * N];
        for (int64_t r = 0; r < rows; ++r) {
          const float* a = src + r * W;
          float* z = dst + r * W;
          float mean = 0.0f, variance = 0.0f;
          for (int64_t c = 0; c < N; ++c) mean += a[c];
          mean /= static_cast<float>(N);
          for (int64_t c = 0; c < N; ++c) variance += (a[c] - mean) * (a[c] - mean);
          const float inverse = 1.0f / std::sqrt(variance / static_cast<float>(N) + eps);
          for (int64_t c = 0; c < N; ++c) z[c] = (a[c] - mean) * inverse * scale[c] + shift[c];  // after the reads
        }
        break;
      }
      case SOFTMAX:
      case LOG_SOFTMAX: {  // over the N columns of each row
        for (int64_t r = 0; r < rows; ++r) {
          const float* a = src + r * W;
          float* z = dst + r * W;
          float top = a[0], sum = 0.0f;
          for (int64_t c = 1; c < N; ++c) top = std::max(top, a[c]);
          for (int64_t c = 0; c < N; ++c) sum += std::exp(a[c] - top);
          if (op[CODE] == SOFTMAX) {
            for (int64_t c = 0; c < N; ++c) z[c] = std::exp(a[c] - top) / sum;
          } else {
            const float log_sum = std::log(sum);
            for (int64_t c = 0; c < N; ++c) z[c] = a[c] - top - log_sum;
          }
        }
        break;
      }
      case EMBED: {  // a WaveNet's ids: one input sample per tick
        const float* table = weights[op[WEIGHT]];
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t b = r0 + r, row = op[ARG] == IDS_INPUT ? in.ids[b * T + t] : in.gids[b];
          std::memcpy(dst + r * W, table + row * N, N * sizeof(float));
        }
        break;
      }
    }
  }
  if (tick >= in.out_start && (tick - in.out_start) % in.out_period == 0) {
    const int64_t j = (tick - in.out_start) / in.out_period - in.out_first, L = in.out_length;
    if (j >= 0 && j < L)
      for (int64_t b = r0; b < r1; ++b)
        for (int64_t c = 0; c < in.out_channels; ++c)
          in.out[(b * in.out_channels + c) * L + j] = work[(b - r0) * W + in.out_off + c];
  }
}

}  // namespace

extern "C" {

// config (fixed per streamer) and call (per call) are laid out as ConfigSlot and CallSlot say,
// pointers as int64 (0 when absent). Runs call[CALL_STEPS] ticks from tick call[CALL_START] for
// all streams, split over call[CALL_THREADS] OpenMP threads by stream. Returns STATUS_OK, or the
// status of an id outside its embedding table (written to call[CALL_BAD_ID]); nothing runs then.
int atrous_fused_run(const int64_t* config, int64_t* call) {
  auto ptr = [](int64_t p) { return reinterpret_cast<void*>(p); };
  const int64_t* ops = static_cast<const int64_t*>(ptr(config[CONFIG_OPS]));
  const int64_t n_ops = config[CONFIG_N_OPS], batch = config[CONFIG_BATCH], width = config[CONFIG_WIDTH];
  const float* const* weights = static_cast<const float* const*>(ptr(config[CONFIG_WEIGHTS]));
  const int64_t* weight_rows = static_cast<const int64_t*>(ptr(config[CONFIG_WEIGHT_ROWS]));
  const Rings rings{static_cast<float* const*>(ptr(config[CONFIG_RINGS])),
                    static_cast<const int64_t*>(ptr(config[CONFIG_RING_LAYOUT])), batch};
  float* work = static_cast<float*>(ptr(config[CONFIG_WORK]));
  const int64_t* ids = static_cast<const int64_t*>(ptr(call[CALL_IDS]));
  const int64_t* gids = static_cast<const int64_t*>(ptr(call[CALL_GLOBAL_IDS]));
  const int64_t steps = call[CALL_STEPS], t0 = call[CALL_START], threads = call[CALL_THREADS];
  for (int64_t i = 0; i < n_ops; ++i) {
    const int64_t* op = ops + i * NFIELDS;
    if (op[CODE] != EMBED) continue;
    const bool input = op[ARG] == IDS_INPUT;
    const int64_t* check = input ? ids : gids;
    const int64_t count = input ? batch * call[CALL_X_LENGTH] : batch, rows = weight_rows[op[WEIGHT]];
    for (int64_t j = 0; j < count; ++j)
      if (check[j] < 0 || check[j] >= rows) {
        call[CALL_BAD_ID] = check[j];
        return input ? STATUS_BAD_INPUT_ID : STATUS_BAD_GLOBAL_ID;
      }
  }
  const Inputs in{static_cast<const float*>(ptr(call[CALL_X])), config[CONFIG_X_CHANNELS], config[CONFIG_X_OFFSET],
                  ids, static_cast<const float*>(ptr(call[CALL_LOCAL])), config[CONFIG_LOCAL_CHANNELS],
                  config[CONFIG_LOCAL_OFFSET], gids, static_cast<float*>(ptr(call[CALL_OUT])),
                  config[CONFIG_OUT_CHANNELS], config[CONFIG_OUT_OFFSET], call[CALL_X_LENGTH], call[CALL_X_FIRST],
                  call[CALL_OUT_LENGTH], call[CALL_OUT_FIRST], config[CONFIG_TICKS], config[CONFIG_OUT_START],
                  config[CONFIG_OUT_PERIOD]};
  auto run_rows = [&](int64_t r0, int64_t r1) {
    for (int64_t t = 0; t < steps; ++t)
      step_rows(ops, n_ops, weights, weight_rows, rings, work, width, in, r0, r1, t0 + t);
  };
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, batch / 4));  // >= 4 streams a thread
  if (parts == 1) {
    run_rows(0, batch);
    return STATUS_OK;
  }
#pragma omp parallel for num_threads(parts) schedule(static)
  for (int64_t p = 0; p < parts; ++p) run_rows(batch * p / parts, batch * (p + 1) / parts);
  return STATUS_OK;
}

}  // extern "C"
