// Every op of the CUDA backend against the CPU reference backend, on random data and sizes
// that are multiples of no tile, with outputs poisoned (0xFF bytes, NaN as floats) before the
// op, for BF16, F16 and F32 weights. Skips, saying why, where no GPU is usable.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "kernels/types.h"

namespace ember::kernels {
namespace {

constexpr ScalarType kAllTypes[] = {ScalarType::kBF16, ScalarType::kF16, ScalarType::kF32};
constexpr size_t kGuardFloats = 64;  // poisoned floats after an op's output

std::vector<float> RandomFloats(size_t n, std::mt19937& rng, float lo = -1, float hi = 1) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Values as stored in `type` (row-major bytes), and those values back in float.
std::vector<uint8_t> Encode(const std::vector<float>& v, ScalarType type) {
  std::vector<uint8_t> bytes(v.size() * ScalarBytes(type));
  RowFromF32(v.data(), type, static_cast<int64_t>(v.size()), bytes.data());
  return bytes;
}

float Decode(const std::vector<uint8_t>& bytes, ScalarType type, size_t i) {
  if (type == ScalarType::kF32) {
    float f;
    std::memcpy(&f, &bytes[i * 4], 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, &bytes[i * 2], 2);
  return type == ScalarType::kBF16 ? Bf16ToFloat(h) : F16ToFloat(h);
}

// got[i] within tolerance(i) of want[i] for every i (a NaN never is); names the first few
// that are not.
::testing::AssertionResult AllWithin(const std::vector<float>& want, const std::vector<float>& got,
                                     const std::function<double(size_t)>& tolerance) {
  if (want.size() != got.size()) {
    return ::testing::AssertionFailure() << "sizes " << want.size() << " vs " << got.size();
  }
  size_t bad = 0;
  std::string first;
  for (size_t i = 0; i < want.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(want[i]) - got[i]);
    if (!(diff <= tolerance(i))) {
      if (++bad <= 5) {
        absl::StrAppend(&first, " [", i, "] cpu ", want[i], " cuda ", got[i], " (tol ",
                        tolerance(i), ")");
      }
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << want.size() << " differ:" << first;
}

::testing::AssertionResult AllNear(const std::vector<float>& want, const std::vector<float>& got,
                                   double abs_tol, double rel_tol) {
  return AllWithin(want, got, [&](size_t i) { return abs_tol + rel_tol * std::fabs(want[i]); });
}

// Same bits (so infinities and NaNs compare too).
::testing::AssertionResult BitwiseEqual(const std::vector<float>& want,
                                        const std::vector<float>& got) {
  if (want.size() != got.size()) {
    return ::testing::AssertionFailure() << "sizes " << want.size() << " vs " << got.size();
  }
  size_t bad = 0;
  std::string first;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::memcmp(&want[i], &got[i], sizeof(float)) != 0 && ++bad <= 5) {
      absl::StrAppend(&first, " [", i, "] cpu ", want[i], " cuda ", got[i]);
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << want.size() << " differ:" << first;
}

// Every float of v from index `from` on is still the 0xFF poison.
::testing::AssertionResult PoisonIntact(const std::vector<float>& v, size_t from) {
  for (size_t i = from; i < v.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], 4);
    if (bits != 0xffffffffu) {
      return ::testing::AssertionFailure() << "float " << i << " past the output was written";
    }
  }
  return ::testing::AssertionSuccess();
}

// One buffer in each backend, holding the same bytes.
struct Pair {
  Buffer cpu, gpu;
};

// A pair's pointer in the CPU or the CUDA backend, for reading (In) or writing (Mut).
template <typename T>
const T* In(const Pair& pair, bool is_gpu) {
  return static_cast<const T*>((is_gpu ? pair.gpu : pair.cpu).data());
}
template <typename T>
T* Mut(Pair& pair, bool is_gpu) {
  return static_cast<T*>((is_gpu ? pair.gpu : pair.cpu).data());
}

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cuda = MakeBackend("cuda");
    if (!cuda.ok()) GTEST_SKIP() << "GPU test skipped: " << cuda.status().message();
    gpu_ = std::move(*cuda);
    auto cpu = MakeBackend("cpu");
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    cpu_ = std::move(*cpu);
  }

  static Buffer Put(Backend& b, const void* data, size_t bytes) {
    auto buf = b.Allocate(bytes, "test buffer");
    if (!buf.ok()) throw std::runtime_error(std::string(buf.status().message()));
    const absl::Status s = b.Upload(buf->data(), data, bytes);
    if (!s.ok()) throw std::runtime_error(std::string(s.message()));
    return std::move(*buf);
  }
  template <typename T>
  Pair Both(const std::vector<T>& host) {
    return {Put(*cpu_, host.data(), host.size() * sizeof(T)),
            Put(*gpu_, host.data(), host.size() * sizeof(T))};
  }
  // `floats` floats of 0xFF bytes (NaN) in both backends.
  Pair Poisoned(size_t floats) { return Both(std::vector<uint32_t>(floats, 0xffffffffu)); }
  // An op's output of `count` floats, poisoned, with kGuardFloats more after it.
  Pair PoisonedOutput(size_t count) { return Poisoned(count + kGuardFloats); }
  template <typename T>
  static std::vector<T> Get(Backend& b, const Buffer& buf, size_t count) {
    std::vector<T> out(count);
    const absl::Status s = b.Download(out.data(), buf.data(), count * sizeof(T));
    if (!s.ok()) throw std::runtime_error(std::string(s.message()));
    return out;
  }
  // The float outputs of both backends: {cpu, cuda}.
  std::pair<std::vector<float>, std::vector<float>> Results(const Pair& p, size_t count) {
    return {Get<float>(*cpu_, p.cpu, count), Get<float>(*gpu_, p.gpu, count)};
  }
  // Results of a PoisonedOutput(count), after checking that the CUDA op left its guard
  // floats alone.
  std::pair<std::vector<float>, std::vector<float>> GuardedResults(const Pair& out, size_t count) {
    auto results = Results(out, count + kGuardFloats);
    EXPECT_TRUE(PoisonIntact(results.second, count));
    results.first.resize(count), results.second.resize(count);
    return results;
  }
  // Runs `op` on the CPU backend, then on the CUDA backend.
  void OnBoth(const std::function<void(Backend&, bool is_gpu)>& op) {
    op(*cpu_, false);
    op(*gpu_, true);
  }

  std::unique_ptr<Backend> gpu_, cpu_;
  std::mt19937 rng_{20240611};
};

// ---- memory and errors -----------------------------------------------------------------

TEST_F(CudaBackendTest, UploadsStayOrderedAndLeaveTheHostBufferFree) {
  // Sizes past the 8 MiB staging buffer make it fill up and wait, and one takes the direct
  // path; the host buffer is overwritten right after each Upload returns.
  const std::vector<size_t> sizes = {3, 1000, 3 << 20, 777, 5 << 20, 4 << 20, 9 << 20, 12, 2 << 20};
  std::vector<uint8_t> host;
  std::vector<Buffer> device;
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto buf = gpu_->Allocate(sizes[i], "upload test");
    ASSERT_TRUE(buf.ok()) << buf.status();
    host.assign(sizes[i], static_cast<uint8_t>(i + 1));
    ASSERT_TRUE(gpu_->Upload(buf->data(), host.data(), sizes[i]).ok());
    std::fill(host.begin(), host.end(), 0xEE);
    device.push_back(std::move(*buf));
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::vector<uint8_t> back(sizes[i]);
    ASSERT_TRUE(gpu_->Download(back.data(), device[i].data(), sizes[i]).ok());
    EXPECT_EQ(std::count(back.begin(), back.end(), static_cast<uint8_t>(i + 1)),
              static_cast<ptrdiff_t>(sizes[i]))
        << "upload " << i;
  }
}

TEST_F(CudaBackendTest, AllocationFailureNamesWhatAndHowMuch) {
  auto buf = gpu_->Allocate(size_t{1} << 50, "kv cache");
  ASSERT_FALSE(buf.ok());
  EXPECT_EQ(buf.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(buf.status().message().find("kv cache"), absl::string_view::npos);
  EXPECT_NE(buf.status().message().find("1125899906842624"), absl::string_view::npos);
  EXPECT_TRUE(gpu_->Synchronize().ok()) << "a failed allocation is no op error";
}

TEST_F(CudaBackendTest, ReportsAnUnsupportedShapeOnceAtSynchronize) {
  Buffer q = Put(*gpu_, std::vector<float>(4 * 100).data(), 4 * 100 * sizeof(float));
  AttentionArgs a;
  a.q = q.as<float>();
  a.out = q.as<float>();
  a.cache = KvLayer{q.data(), q.data(), ScalarType::kF32, 16, 1, 100};  // head_dim 100 % 8 != 0
  a.block_tables = reinterpret_cast<const int32_t*>(q.data());
  a.max_blocks_per_seq = 1;
  a.token_seq = a.token_pos = a.block_tables;
  a.n = 1;
  a.q_heads = 1;
  gpu_->Attention(a);
  const absl::Status s = gpu_->Synchronize();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("Attention"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("head_dim=100"), absl::string_view::npos) << s;
  EXPECT_TRUE(gpu_->Synchronize().ok());
}

TEST_F(CudaBackendTest, KeepsTheCacheInTheWeightType) {
  for (ScalarType t : kAllTypes) EXPECT_EQ(gpu_->KvType(t), t);
  EXPECT_GT(gpu_->AttentionWorkspaceBytes(1, 32, 128), 0u);
  EXPECT_GE(gpu_->AttentionWorkspaceBytes(256, 32, 128), gpu_->AttentionWorkspaceBytes(8, 32, 128));
}

// ---- conversions, embedding, gathers ---------------------------------------------------

TEST_F(CudaBackendTest, ToF32IsExactForEveryType) {
  const int64_t rows = 33, cols = 577;
  for (ScalarType type : kAllTypes) {
    SCOPED_TRACE(ScalarName(type));
    const std::vector<uint8_t> bytes = Encode(RandomFloats(rows * cols, rng_, -70000, 70000), type);
    Pair in = Both(bytes);
    Pair out = PoisonedOutput(rows * cols);
    OnBoth([&](Backend& b, bool g) {
      b.ToF32(Matrix{In<void>(in, g), type, rows, cols}, Mut<float>(out, g));
    });
    auto [want, got] = GuardedResults(out, rows * cols);
    EXPECT_TRUE(BitwiseEqual(want, got));
    for (size_t i = 0; i < 5; ++i) EXPECT_EQ(got[i], Decode(bytes, type, i));
  }
}

TEST_F(CudaBackendTest, EmbedGathersAndConvertsRows) {
  const int64_t vocab = 1000;
  const std::vector<int32_t> ids = {0, 999, 5, 5, 517, 3, 998};
  const int n = static_cast<int>(ids.size());
  for (int64_t hidden : {int64_t{577}, int64_t{64}}) {
    for (ScalarType type : kAllTypes) {
      SCOPED_TRACE(absl::StrCat(ScalarName(type), " hidden ", hidden));
      Pair table = Both(Encode(RandomFloats(vocab * hidden, rng_), type));
      Pair id_buf = Both(ids);
      Pair out = PoisonedOutput(n * hidden);
      OnBoth([&](Backend& b, bool g) {
        b.Embed(Matrix{In<void>(table, g), type, vocab, hidden}, In<int32_t>(id_buf, g), n,
                Mut<float>(out, g));
      });
      auto [want, got] = GuardedResults(out, n * hidden);
      EXPECT_TRUE(BitwiseEqual(want, got));
    }
  }
}

TEST_F(CudaBackendTest, GatherRowsCopiesTheChosenRows) {
  const int width = 333;
  const std::vector<int32_t> rows = {49, 0, 7, 7, 13};
  const int n = static_cast<int>(rows.size());
  Pair in = Both(RandomFloats(50 * width, rng_));
  Pair row_buf = Both(rows);
  Pair out = PoisonedOutput(n * width);
  OnBoth([&](Backend& b, bool g) {
    b.GatherRows(In<float>(in, g), In<int32_t>(row_buf, g), n, width, Mut<float>(out, g));
  });
  auto [want, got] = GuardedResults(out, n * width);
  EXPECT_TRUE(BitwiseEqual(want, got));
}

// ---- elementwise and per-row ops -------------------------------------------------------

TEST_F(CudaBackendTest, AddRmsNormMatchesCpuWithAndWithoutResidualInput) {
  const int n = 5;
  for (int hidden : {577, 4096}) {
    for (bool with_x : {true, false}) {
      SCOPED_TRACE(absl::StrCat("hidden ", hidden, with_x ? " with x" : " without x"));
      Pair x = Both(RandomFloats(n * hidden, rng_));
      Pair residual = Both(RandomFloats(n * hidden, rng_, -3, 3));
      Pair weight = Both(RandomFloats(hidden, rng_, 0.5, 1.5));
      Pair out = PoisonedOutput(n * hidden);
      OnBoth([&](Backend& b, bool g) {
        b.AddRmsNorm(with_x ? In<float>(x, g) : nullptr, Mut<float>(residual, g),
                     In<float>(weight, g), n, hidden, 1e-6f, Mut<float>(out, g));
      });
      auto [want, got] = GuardedResults(out, n * hidden);
      EXPECT_TRUE(AllNear(want, got, 1e-6, 1e-5));
      auto [want_r, got_r] = Results(residual, n * hidden);
      EXPECT_TRUE(BitwiseEqual(want_r, got_r)) << "the residual after the add";
    }
  }
}

TEST_F(CudaBackendTest, RopeMatchesCpuAtLargePositions) {
  const int n = 9, q_heads = 6, kv_heads = 2;
  const std::vector<int32_t> positions = {0, 1, 15, 16, 511, 4095, 8191, 20000, 131071};
  for (int head_dim : {64, 128}) {
    SCOPED_TRACE(absl::StrCat("head_dim ", head_dim));
    std::vector<float> inv_freq(head_dim / 2);
    for (int i = 0; i < head_dim / 2; ++i) {
      inv_freq[i] = 1.0f / std::pow(500000.0f, 2.0f * i / head_dim);
    }
    Pair q = Both(RandomFloats(n * q_heads * head_dim, rng_));
    Pair k = Both(RandomFloats(n * kv_heads * head_dim, rng_));
    Pair pos = Both(positions);
    Pair freq = Both(inv_freq);
    OnBoth([&](Backend& b, bool g) {
      b.Rope(Mut<float>(q, g), Mut<float>(k, g), In<int32_t>(pos, g), In<float>(freq, g), n,
             q_heads, kv_heads, head_dim);
    });
    auto [want_q, got_q] = Results(q, n * q_heads * head_dim);
    EXPECT_TRUE(AllNear(want_q, got_q, 1e-5, 0));
    auto [want_k, got_k] = Results(k, n * kv_heads * head_dim);
    EXPECT_TRUE(AllNear(want_k, got_k, 1e-5, 0));
  }
}

TEST_F(CudaBackendTest, SwiGluMatchesCpuInPlaceAndUnaligned) {
  const int64_t count = 1001;
  const std::vector<float> gate = RandomFloats(count + 1, rng_, -12, 12);
  const std::vector<float> up = RandomFloats(count + 1, rng_, -2, 2);
  for (int offset : {0, 1}) {  // 1: pointers off 16-byte alignment
    for (bool in_place : {false, true}) {
      SCOPED_TRACE(absl::StrCat("offset ", offset, in_place ? " in place" : ""));
      Pair g_buf = Both(gate), u_buf = Both(up);
      Pair out = Poisoned(count + 1 + kGuardFloats);
      OnBoth([&](Backend& b, bool g) {
        float* dst = in_place ? Mut<float>(g_buf, g) + offset : Mut<float>(out, g) + offset;
        b.SwiGlu(In<float>(g_buf, g) + offset, In<float>(u_buf, g) + offset, count, dst);
      });
      auto [want, got] = Results(in_place ? g_buf : out, count + 1 + (in_place ? 0 : kGuardFloats));
      if (!in_place) {
        EXPECT_TRUE(PoisonIntact(got, count + offset));
      }
      want.erase(want.begin(), want.begin() + offset), got.erase(got.begin(), got.begin() + offset);
      want.resize(count), got.resize(count);
      EXPECT_TRUE(AllNear(want, got, 1e-7, 2e-6));
    }
  }
}

// ---- linear ----------------------------------------------------------------------------

// Sum over c of |x[t, c] * w[r, c]| for every output [t, r]: the scale that every rounding
// error of the dot product is relative to.
std::vector<double> DotScales(const std::vector<float>& x, int n, const std::vector<uint8_t>& w,
                              ScalarType type, int64_t rows, int64_t cols) {
  std::vector<double> wabs(rows * cols);
  for (size_t i = 0; i < wabs.size(); ++i) wabs[i] = std::fabs(Decode(w, type, i));
  std::vector<double> scale(n * rows);
  for (int t = 0; t < n; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += std::fabs(x[t * cols + c]) * wabs[r * cols + c];
      scale[t * rows + r] = s;
    }
  }
  return scale;
}

// Relative error allowed against DotScales: FP32 accumulation, except that the cuBLAS path
// (n > 16) rounds x to the weights' 16-bit type (2^-9 for BF16, 2^-11 for F16) first.
double LinearTolerance(int n, ScalarType type) {
  if (n <= 16 || type == ScalarType::kF32) return 3e-5;
  return type == ScalarType::kBF16 ? 1.0 / 256 : 1.0 / 1024;
}

TEST_F(CudaBackendTest, LinearMatchesCpuForEveryTypeAndTokenCount) {
  struct Shape {
    int64_t rows, cols;
  };
  for (Shape shape : {Shape{33, 577}, Shape{64, 1000}, Shape{300, 4096}}) {
    const int64_t rows = shape.rows, cols = shape.cols;
    const std::vector<float> x = RandomFloats(40 * cols, rng_);
    Pair x_buf = Both(x);
    Pair bias = Both(RandomFloats(rows, rng_));
    for (ScalarType type : kAllTypes) {
      const std::vector<uint8_t> w = Encode(RandomFloats(rows * cols, rng_), type);
      Pair w_buf = Both(w);
      const std::vector<double> scale = DotScales(x, 40, w, type, rows, cols);
      for (int n : {1, 2, 3, 5, 8, 9, 16, 17, 40}) {
        SCOPED_TRACE(absl::StrCat(ScalarName(type), " [", rows, ", ", cols, "] n=", n));
        const bool with_bias = n % 2 == 1;
        Pair y = PoisonedOutput(n * rows);
        OnBoth([&](Backend& b, bool g) {
          b.Linear(In<float>(x_buf, g), n, Matrix{In<void>(w_buf, g), type, rows, cols},
                   with_bias ? In<float>(bias, g) : nullptr, Mut<float>(y, g));
        });
        auto [want, got] = GuardedResults(y, n * rows);
        const double rel = LinearTolerance(n, type);
        EXPECT_TRUE(AllWithin(want, got, [&](size_t i) { return 1e-6 + rel * scale[i]; }));
      }
    }
  }
}

TEST_F(CudaBackendTest, LinearReadsWeightsAtAnUnalignedAddress) {
  const int64_t rows = 20, cols = 1000;  // rows 16-byte aligned, were the start aligned
  const std::vector<float> x = RandomFloats(4 * cols, rng_);
  Pair x_buf = Both(x);
  for (ScalarType type : kAllTypes) {
    std::vector<uint8_t> w = Encode(RandomFloats(rows * cols, rng_), type);
    const std::vector<double> scale = DotScales(x, 4, w, type, rows, cols);
    w.insert(w.begin(), ScalarBytes(type), 0);  // the matrix starts one element in
    Pair w_buf = Both(w);
    for (int n : {1, 4}) {
      SCOPED_TRACE(absl::StrCat(ScalarName(type), " n=", n));
      Pair y = PoisonedOutput(n * rows);
      OnBoth([&](Backend& b, bool g) {
        const auto* data = static_cast<const uint8_t*>(In<void>(w_buf, g)) + ScalarBytes(type);
        b.Linear(In<float>(x_buf, g), n, Matrix{data, type, rows, cols}, nullptr, Mut<float>(y, g));
      });
      auto [want, got] = GuardedResults(y, n * rows);
      EXPECT_TRUE(AllWithin(want, got, [&](size_t i) { return 1e-6 + 3e-5 * scale[i]; }));
    }
  }
}

// ---- KV cache and attention ------------------------------------------------------------

TEST_F(CudaBackendTest, KvStoreWritesOnlyItsSlots) {
  const int kv_heads = 2, head_dim = 64, block_size = 16, slots_total = 10 * block_size;
  const std::vector<int32_t> slots = {159, 0, 17, 16, 100};
  const int n = static_cast<int>(slots.size());
  Pair k = Both(RandomFloats(n * kv_heads * head_dim, rng_, -3, 3));
  Pair v = Both(RandomFloats(n * kv_heads * head_dim, rng_, -3, 3));
  Pair slot_buf = Both(slots);
  for (ScalarType type : kAllTypes) {
    SCOPED_TRACE(ScalarName(type));
    const size_t floats = slots_total * kv_heads * head_dim * ScalarBytes(type) / 4;
    Pair k_cache = Poisoned(floats), v_cache = Poisoned(floats);
    OnBoth([&](Backend& b, bool g) {
      const KvLayer cache{
          Mut<float>(k_cache, g), Mut<float>(v_cache, g), type, block_size, kv_heads, head_dim};
      b.KvStore(cache, In<float>(k, g), In<float>(v, g), In<int32_t>(slot_buf, g), n);
    });
    for (Pair* cache : {&k_cache, &v_cache}) {
      const auto want = Get<uint32_t>(*cpu_, cache->cpu, floats);
      const auto got = Get<uint32_t>(*gpu_, cache->gpu, floats);
      size_t differ = 0;
      for (size_t i = 0; i < floats; ++i) differ += want[i] != got[i];
      EXPECT_EQ(differ, 0u) << "words of the cache differ (both started as 0xFF)";
    }
  }
}

struct AttentionCase {
  std::string name;
  int q_heads, kv_heads, head_dim, block_size, sliding_window;
  std::vector<int> context;  // per sequence: positions in the cache
  std::vector<int> queries;  // per sequence: its last positions that are in the batch
  ScalarType cache_type = ScalarType::kF32;
  bool workspace = true;
};

class CudaAttentionTest : public CudaBackendTest {
 protected:
  // Fills a paged cache (blocks scattered in a random order) with every sequence's keys and
  // values through KvStore, then runs Attention for the batch on both backends.
  void Check(const AttentionCase& c) {
    SCOPED_TRACE(c.name);
    const int seqs = static_cast<int>(c.context.size());
    const int width = c.kv_heads * c.head_dim;
    int max_blocks = 0, total_blocks = 0;
    for (int len : c.context) {
      const int blocks = (len + c.block_size - 1) / c.block_size;
      max_blocks = std::max(max_blocks, blocks + 3);  // spare table entries widen the span
      total_blocks += blocks;
    }
    std::vector<int32_t> order(total_blocks);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng_);
    std::vector<int32_t> tables(seqs * max_blocks, 0), store_slots, token_seq, token_pos;
    for (int s = 0, next = 0; s < seqs; ++s) {
      for (int p = 0; p < c.context[s]; ++p) {
        if (p % c.block_size == 0) tables[s * max_blocks + p / c.block_size] = order[next++];
        store_slots.push_back(tables[s * max_blocks + p / c.block_size] * c.block_size +
                              p % c.block_size);
      }
      for (int i = 0; i < c.queries[s]; ++i) {
        token_seq.push_back(s);
        token_pos.push_back(c.context[s] - c.queries[s] + i);
      }
    }
    const int stored = static_cast<int>(store_slots.size());
    const int n = static_cast<int>(token_seq.size());
    const size_t cache_floats =
        static_cast<size_t>(total_blocks) * c.block_size * width * ScalarBytes(c.cache_type) / 4;
    Pair k_cache = Poisoned(cache_floats), v_cache = Poisoned(cache_floats);
    Pair k = Both(RandomFloats(stored * width, rng_)), v = Both(RandomFloats(stored * width, rng_));
    Pair q = Both(RandomFloats(n * c.q_heads * c.head_dim, rng_, -4, 4));
    Pair slot_buf = Both(store_slots), table_buf = Both(tables);
    Pair seq_buf = Both(token_seq), pos_buf = Both(token_pos);
    const size_t count = static_cast<size_t>(n) * c.q_heads * c.head_dim;
    Pair out = PoisonedOutput(count);
    const size_t workspace_bytes =
        c.workspace ? gpu_->AttentionWorkspaceBytes(n, c.q_heads, c.head_dim) : 0;
    Buffer workspace;
    if (workspace_bytes > 0) {
      workspace = Put(*gpu_, std::vector<uint8_t>(workspace_bytes, 0xFF).data(), workspace_bytes);
    }
    OnBoth([&](Backend& b, bool g) {
      const KvLayer cache{Mut<float>(k_cache, g),
                          Mut<float>(v_cache, g),
                          c.cache_type,
                          c.block_size,
                          c.kv_heads,
                          c.head_dim};
      b.KvStore(cache, In<float>(k, g), In<float>(v, g), In<int32_t>(slot_buf, g), stored);
      AttentionArgs a;
      a.q = In<float>(q, g);
      a.out = Mut<float>(out, g);
      a.cache = cache;
      a.block_tables = In<int32_t>(table_buf, g);
      a.max_blocks_per_seq = max_blocks;
      a.token_seq = In<int32_t>(seq_buf, g);
      a.token_pos = In<int32_t>(pos_buf, g);
      a.n = n;
      a.q_heads = c.q_heads;
      a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
      a.sliding_window = c.sliding_window;
      if (g) a.workspace = workspace.data(), a.workspace_bytes = workspace_bytes;
      b.Attention(a);
    });
    auto [want, got] = GuardedResults(out, count);
    EXPECT_TRUE(AllNear(want, got, 5e-5, 0));
  }
};

TEST_F(CudaAttentionTest, DecodeWithGqaAndSplitsMatchesCpu) {
  Check(
      {"GQA 4:1, head_dim 128, 1 to 3 splits", 8, 2, 128, 16, 0, {1, 17, 700, 1500}, {1, 1, 1, 1}});
  Check({"GQA 16:1, head_dim 256", 16, 1, 256, 16, 0, {600, 3}, {2, 1}});
  Check({"20000 keys: the partition grows to keep 32 splits", 2, 1, 64, 32, 0, {20000}, {1}});
}

TEST_F(CudaAttentionTest, MixedPrefillAndDecodeBatchMatchesCpu) {
  Check({"GQA 3:1, head_dim 64, chunk + decodes", 9, 3, 64, 16, 0, {40, 1100, 5}, {23, 1, 1}});
  Check({"101 tokens: one split per token", 8, 2, 128, 16, 0, {700, 33}, {100, 1}});
}

TEST_F(CudaAttentionTest, SlidingWindowMatchesCpu) {
  Check({"window 100, head_dim 80", 4, 2, 80, 16, 100, {700, 130}, {1, 40}});
  Check({"window 1000 over 2000 keys, 2 splits", 4, 1, 64, 16, 1000, {2000, 999}, {1, 3}});
}

TEST_F(CudaAttentionTest, HalfPrecisionCachesMatchCpuOnTheSameValues) {
  for (ScalarType type : {ScalarType::kBF16, ScalarType::kF16}) {
    AttentionCase c{"16-bit cache", 8, 2, 128, 16, 0, {1, 17, 700, 1500}, {1, 1, 1, 3}, type};
    c.name = absl::StrCat(ScalarName(type), " cache");
    Check(c);
  }
}

TEST_F(CudaAttentionTest, RunsWithoutWorkspaceInOneSplit) {
  AttentionCase c{"no workspace", 8, 2, 128, 16, 0, {1, 17, 700, 1500}, {1, 1, 1, 1}};
  c.workspace = false;
  Check(c);
}

// ---- sampling --------------------------------------------------------------------------

class CudaSamplingTest : public CudaBackendTest {
 protected:
  // {cpu tokens, cuda tokens} for rows of logits [rows.size(), vocab].
  std::pair<std::vector<int32_t>, std::vector<int32_t>> SampleBoth(
      const std::vector<float>& logits, int vocab, const std::vector<SamplingRow>& rows) {
    const int n = static_cast<int>(rows.size());
    Pair l = Both(logits), r = Both(rows);
    Pair tokens = Both(std::vector<int32_t>(n, -7));
    OnBoth([&](Backend& b, bool g) {
      b.Sample(In<float>(l, g), n, vocab, In<SamplingRow>(r, g), Mut<int32_t>(tokens, g));
    });
    return {Get<int32_t>(*cpu_, tokens.cpu, n), Get<int32_t>(*gpu_, tokens.gpu, n)};
  }
};

TEST_F(CudaSamplingTest, GreedyTakesTheLowestIndexOfTheMaximum) {
  const int vocab = 50000;
  std::vector<float> logits = RandomFloats(4 * vocab, rng_, -10, 10);
  logits[vocab + 123] = logits[vocab + 40000] = 20;                         // row 1: a tie
  std::fill(logits.begin() + 2 * vocab, logits.begin() + 3 * vocab, 0.5f);  // row 2: all tied
  std::fill(logits.begin() + 3 * vocab, logits.end(), -INFINITY);           // row 3: one finite
  logits[3 * vocab + 49999] = -1e30f;
  auto [want, got] = SampleBoth(logits, vocab, std::vector<SamplingRow>(4));
  EXPECT_EQ(want, got);
  EXPECT_EQ(got[1], 123);
  EXPECT_EQ(got[2], 0);
  EXPECT_EQ(got[3], 49999);
}

TEST_F(CudaSamplingTest, EachFilterKeepsExactlyItsTokens) {
  // Three finite logits: p(7) = 1/6, p(9) = 3/6, p(4000) = 2/6; cumulative in vocabulary
  // order 1/6, 4/6, 1. Every uniform below is far from a boundary.
  const int vocab = 4099;
  std::vector<float> row(vocab, -INFINITY);
  row[7] = 0, row[9] = std::log(3.0f), row[4000] = std::log(2.0f);
  struct Expectation {
    SamplingRow r;
    int32_t token;
  };
  const std::vector<Expectation> cases = {
      {{1, 0, 1, 0, 0.0f}, 7},       {{1, 0, 1, 0, 0.1f}, 7},       {{1, 0, 1, 0, 0.6f}, 9},
      {{1, 0, 1, 0, 0.7f}, 4000},    {{1, 1, 1, 0, 0.1f}, 9},       {{1, 2, 1, 0, 0.1f}, 9},
      {{1, 2, 1, 0, 0.7f}, 4000},    {{1, 0, 0.45f, 0, 0.9f}, 9},   {{1, 0, 0.6f, 0, 0.1f}, 9},
      {{1, 0, 0.6f, 0, 0.9f}, 4000}, {{1, 0, 1, 0.5f, 0.9f}, 4000}, {{1, 0, 1, 0.7f, 0.9f}, 9},
      {{0.5f, 0, 1, 0, 0.05f}, 7},   {{0.5f, 0, 1, 0, 0.5f}, 9},    {{0.5f, 0, 1, 0, 0.8f}, 4000},
  };
  std::vector<float> logits;
  std::vector<SamplingRow> rows;
  for (const Expectation& e : cases) {
    logits.insert(logits.end(), row.begin(), row.end());
    rows.push_back(e.r);
  }
  auto [want, got] = SampleBoth(logits, vocab, rows);
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(got[i], cases[i].token) << "case " << i;
    EXPECT_EQ(want[i], cases[i].token) << "case " << i << " (cpu)";
  }
}

TEST_F(CudaSamplingTest, RandomLogitsGiveTheCpusTokensDeterministically) {
  // Compacted candidates (peaked rows of 32000) and the fallback over the whole row (flat
  // rows of 100000, more candidates than fit in shared memory).
  struct Batch {
    int vocab;
    float spread;
  };
  for (Batch batch : {Batch{32000, 3.0f}, Batch{100000, 0.01f}}) {
    SCOPED_TRACE(absl::StrCat("vocab ", batch.vocab));
    std::normal_distribution<float> normal(0, batch.spread);
    std::uniform_real_distribution<float> uniform(0, 1);
    std::vector<SamplingRow> rows;
    for (float temperature : {0.6f, 1.0f, 1.7f}) {
      for (int top_k : {0, 1, 40, 5000}) {
        for (float top_p : {1.0f, 0.9f, 0.3f}) {
          for (float min_p : {0.0f, 0.05f}) {
            rows.push_back({temperature, top_k, top_p, min_p, uniform(rng_)});
          }
        }
      }
    }
    std::vector<float> logits(rows.size() * batch.vocab);
    for (float& l : logits) l = normal(rng_);
    auto [want, got] = SampleBoth(logits, batch.vocab, rows);
    size_t differ = 0;
    for (size_t i = 0; i < rows.size(); ++i) differ += want[i] != got[i];
    // The two part ways only where a running sum lands within rounding (expf's 2 ulp)
    // of a boundary: rare, but not never.
    EXPECT_LE(differ, rows.size() / 20) << "rows whose token differs from the CPU's";
    auto [want_again, got_again] = SampleBoth(logits, batch.vocab, rows);
    EXPECT_EQ(got, got_again) << "the same rows must give the same tokens";
  }
}

}  // namespace
}  // namespace ember::kernels
