// mmbal-ops' own CUDA kernels, compiled to PTX at build time (build.rs) and loaded once per
// device. Semantics are PyTorch's, matching the CPU custom ops beside them:
// ReLU keeps NaN and withholds the gradient where the output is not > 0; max-pool takes the first
// maximum in scan order (a NaN wins, the last NaN) and its backward gathers per input, so no
// atomics and a fixed summation order; the optimizer updates are PyTorch's SGD and Adam formulas,
// one thread per element, many parameters per launch.
#include <cuda_bf16.h>
#include <stdint.h>

// Element access in f32 for f32 and bf16 maps (mixed precision): a bf16 value widens exactly,
// and a result is rounded to bf16 to nearest even, as the CPU's `to_dtype` does.
__device__ __forceinline__ float load(const float *p, uint64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16 *p, uint64_t i) {
  return __bfloat162float(p[i]);
}
__device__ __forceinline__ void store(float *p, uint64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16 *p, uint64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

template <typename T>
__device__ void relu_fwd(const T *x, T *y, uint64_t n) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)blockDim.x * gridDim.x) {
    float v = load(x, i);
    store(y, i, (v > 0.0f || isnan(v)) ? v : 0.0f);
  }
}

template <typename T>
__device__ void relu_bwd(const T *y, const T *dy, T *dx, uint64_t n) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)blockDim.x * gridDim.x) {
    store(dx, i, load(y, i) > 0.0f ? load(dy, i) : 0.0f);
  }
}

// One thread per output element of (planes, oh, ow); idx holds the within-plane input index of
// the chosen maximum.
template <typename T>
__device__ void max_pool_fwd(const T *x, T *y, int32_t *idx, uint64_t planes, int h, int w,
                             int oh, int ow, int k, int s, int p) {
  uint64_t total = planes * (uint64_t)oh * ow;
  for (uint64_t o = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; o < total;
       o += (uint64_t)blockDim.x * gridDim.x) {
    int ox = o % ow;
    int oy = (o / ow) % oh;
    uint64_t plane = o / ((uint64_t)oh * ow);
    int hs = oy * s - p, ws = ox * s - p;
    int he = min(hs + k, h), we = min(ws + k, w);
    hs = max(hs, 0);
    ws = max(ws, 0);
    const T *xp = x + plane * (uint64_t)h * w;
    float best = -INFINITY;
    int bi = hs * w + ws;
    for (int r = hs; r < he; ++r) {
      for (int c = ws; c < we; ++c) {
        float v = load(xp, r * w + c);
        if (v > best || isnan(v)) {
          best = v;
          bi = r * w + c;
        }
      }
    }
    store(y, o, best);
    idx[o] = bi;
  }
}

// One thread per input element: sums, in output order, the gradients of the windows whose
// maximum it is (in f32, rounded once).
template <typename T>
__device__ void max_pool_bwd(const T *dy, const int32_t *idx, T *dx, uint64_t planes, int h,
                             int w, int oh, int ow, int k, int s, int p) {
  uint64_t total = planes * (uint64_t)h * w;
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total;
       i += (uint64_t)blockDim.x * gridDim.x) {
    int c = i % w;
    int r = (i / w) % h;
    uint64_t plane = i / ((uint64_t)h * w);
    // Windows oy with oy*s - p <= r < oy*s - p + k.
    int oy0 = (r + p < k) ? 0 : (r + p - k) / s + 1;
    int oy1 = min((r + p) / s + 1, oh);
    int ox0 = (c + p < k) ? 0 : (c + p - k) / s + 1;
    int ox1 = min((c + p) / s + 1, ow);
    const T *g = dy + plane * (uint64_t)oh * ow;
    const int32_t *ix = idx + plane * (uint64_t)oh * ow;
    int me = r * w + c;
    float acc = 0.0f;
    for (int oy = oy0; oy < oy1; ++oy) {
      for (int ox = ox0; ox < ox1; ++ox) {
        if (ix[oy * ow + ox] == me) acc += load(g, oy * ow + ox);
      }
    }
    store(dx, i, acc);
  }
}

// The entry points, one per element type.
#define MMBAL_ELEMENTWISE(SUFFIX, T)                                                          \
  extern "C" __global__ void mmbal_relu_fwd##SUFFIX(const T *x, T *y, uint64_t n) {          \
    relu_fwd(x, y, n);                                                                        \
  }                                                                                           \
  extern "C" __global__ void mmbal_relu_bwd##SUFFIX(const T *y, const T *dy, T *dx,          \
                                                    uint64_t n) {                             \
    relu_bwd(y, dy, dx, n);                                                                   \
  }                                                                                           \
  extern "C" __global__ void mmbal_max_pool_fwd##SUFFIX(const T *x, T *y, int32_t *idx,      \
                                                        uint64_t planes, int h, int w,       \
                                                        int oh, int ow, int k, int s, int p) { \
    max_pool_fwd(x, y, idx, planes, h, w, oh, ow, k, s, p);                                  \
  }                                                                                           \
  extern "C" __global__ void mmbal_max_pool_bwd##SUFFIX(const T *dy, const int32_t *idx,     \
                                                        T *dx, uint64_t planes, int h, int w, \
                                                        int oh, int ow, int k, int s, int p) { \
    max_pool_bwd(dy, idx, dx, planes, h, w, oh, ow, k, s, p);                                \
  }

MMBAL_ELEMENTWISE(, float)
MMBAL_ELEMENTWISE(_bf16, __nv_bfloat16)

// Up to MMBAL_TENSORS parameters per launch, passed by value (like PyTorch's multi_tensor_apply);
// blockIdx.y picks the tensor.
#define MMBAL_TENSORS 24
struct TensorList {
  uint64_t param[MMBAL_TENSORS];
  uint64_t grad[MMBAL_TENSORS];
  uint64_t state1[MMBAL_TENSORS];
  uint64_t state2[MMBAL_TENSORS];
  uint64_t len[MMBAL_TENSORS];
  float lr[MMBAL_TENSORS];
};

// PyTorch's SGD: g += wd * p; b = momentum * b + g (b = g on the first step); p -= lr * b.
// Without momentum state1 is unused.
extern "C" __global__ void mmbal_sgd_step(TensorList t, float momentum, float weight_decay,
                                          int first) {
  int j = blockIdx.y;
  float *p = (float *)t.param[j];
  const float *g = (const float *)t.grad[j];
  float *b = (float *)t.state1[j];
  uint64_t n = t.len[j];
  float lr = t.lr[j];
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)blockDim.x * gridDim.x) {
    float pv = p[i];
    float gv = g[i];
    if (weight_decay != 0.0f) gv = gv + pv * weight_decay;
    if (momentum != 0.0f) {
      gv = first ? gv : b[i] * momentum + gv;
      b[i] = gv;
    }
    p[i] = pv - gv * lr;
  }
}

// PyTorch's Adam (AdamW when decoupled): moments m, v; the update
// p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps).
extern "C" __global__ void mmbal_adam_step(TensorList t, float b1, float b2, float eps,
                                           float weight_decay, int decoupled, float bc1,
                                           float sqrt_bc2) {
  int j = blockIdx.y;
  float *p = (float *)t.param[j];
  const float *g = (const float *)t.grad[j];
  float *m = (float *)t.state1[j];
  float *v = (float *)t.state2[j];
  uint64_t n = t.len[j];
  float lr = t.lr[j];
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)blockDim.x * gridDim.x) {
    float pv = p[i];
    float gv = g[i];
    if (decoupled) {
      pv = pv * (1.0f - lr * weight_decay);
    } else if (weight_decay != 0.0f) {
      gv = gv + pv * weight_decay;
    }
    float mv = m[i] * b1 + gv * (1.0f - b1);
    float vv = v[i] * b2 + gv * gv * (1.0f - b2);
    m[i] = mv;
    v[i] = vv;
    float denom = sqrtf(vv) / sqrt_bc2 + eps;
    p[i] = pv - (mv / denom) * (lr / bc1);
  }
}

// flags[j] = 1 when tensor j (its `param` slot) holds a NaN or an infinity; flags start at 0.
extern "C" __global__ void mmbal_nonfinite(TensorList t, int32_t *flags) {
  int j = blockIdx.y;
  const float *x = (const float *)t.param[j];
  uint64_t n = t.len[j];
  int bad = 0;
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)blockDim.x * gridDim.x) {
    if (!isfinite(x[i])) bad = 1;
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) flags[j] = 1;
}

// y = x * a[c] + b[c] over an (N, C, HW) map.
extern "C" __global__ void mmbal_channel_affine(const float *x, const float *a, const float *b,
                                                float *y, uint64_t n, int c, uint64_t hw) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)blockDim.x * gridDim.x) {
    int ch = (i / hw) % c;
    y[i] = x[i] * a[ch] + b[ch];
  }
}

// out[c] = sum over (N, HW) of x[n, c, :]: one block per channel, a fixed summation order
// (per-thread strided partial sums, then a tree in shared memory), in double as the CPU op.
extern "C" __global__ void mmbal_sum_per_channel(const float *x, float *out, int nb, int c,
                                                 uint64_t hw) {
  __shared__ double part[256];
  int ch = blockIdx.x;
  double acc = 0.0;
  uint64_t total = (uint64_t)nb * hw;
  for (uint64_t j = threadIdx.x; j < total; j += blockDim.x) {
    uint64_t n = j / hw, k = j % hw;
    acc += x[(n * c + ch) * hw + k];
  }
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[ch] = (float)part[0];
}
