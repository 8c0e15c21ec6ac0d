// The CPU backend's ops against straightforward double-precision references, on random
// shapes that are not multiples of any tile or vector width.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

namespace ember::kernels {
namespace {

class CpuOpsTest : public ::testing::Test {
 protected:
  void SetUp() override { backend_ = *MakeBackend("cpu"); }

  std::vector<float> Random(size_t n, float scale = 1.0f) {
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng_);
    return v;
  }

  std::unique_ptr<Backend> backend_;
  std::mt19937 rng_{7};
};

// Weights stored in `type`, plus the F32 values they actually hold.
struct TypedMatrix {
  std::vector<uint8_t> bytes;
  std::vector<float> values;
  Matrix m;
};

TypedMatrix MakeMatrix(const std::vector<float>& v, ScalarType type, int64_t rows, int64_t cols) {
  TypedMatrix t;
  t.bytes.resize(v.size() * ScalarBytes(type));
  RowFromF32(v.data(), type, static_cast<int64_t>(v.size()), t.bytes.data());
  t.values = v;
  if (type != ScalarType::kF32) {  // the values the 16-bit bytes hold, decoded one by one
    for (size_t i = 0; i < v.size(); ++i) {
      uint16_t h;
      std::memcpy(&h, t.bytes.data() + 2 * i, 2);
      t.values[i] = type == ScalarType::kBF16 ? Bf16ToFloat(h) : F16ToFloat(h);
    }
  }
  t.m = Matrix{t.bytes.data(), type, rows, cols};
  return t;
}

TEST_F(CpuOpsTest, LinearMatchesADoubleReferenceForEveryWeightType) {
  for (ScalarType type : {ScalarType::kF32, ScalarType::kF16, ScalarType::kBF16}) {
    for (auto [n, rows, cols] : {std::tuple{1, 33, 577}, {5, 70, 1000}, {67, 13, 95}, {2, 9, 17}}) {
      auto w = MakeMatrix(Random(rows * cols, 0.5f), type, rows, cols);
      auto x = Random(n * cols);
      auto bias = Random(rows);
      std::vector<float> y(n * rows, NAN);
      backend_->Linear(x.data(), n, w.m, bias.data(), y.data());
      for (int t = 0; t < n; ++t) {
        for (int r = 0; r < rows; ++r) {
          double ref = bias[r];
          for (int c = 0; c < cols; ++c) ref += double(x[t * cols + c]) * w.values[r * cols + c];
          ASSERT_NEAR(y[t * rows + r], ref, 1e-4 * std::sqrt(double(cols)))
              << ScalarName(type) << " n=" << n << " rows=" << rows << " cols=" << cols;
        }
      }
    }
  }
}

// In BF16 compute precision the activations are rounded to BF16 (round to nearest even)
// and the products summed in FP32: the reference is the double-precision sum over the
// rounded activations. Token counts on both sides of the switch from Ember's loop to
// oneDNN's GEMM (16), weight rows not a multiple of its 64-row slices, columns not a
// multiple of 32.
TEST_F(CpuOpsTest, LinearInBf16PrecisionMatchesADoubleReferenceOverRoundedActivations) {
  cpu::SetComputePrecision(cpu::ComputePrecision::kBf16);
  struct Restore {
    ~Restore() { cpu::SetComputePrecision(cpu::ComputePrecision::kF32); }
  } restore;
  if (!cpu::UsesBf16Compute()) GTEST_SKIP() << cpu::ComputePrecisionDescription();
  for (auto [n, rows, cols] : {std::tuple{1, 33, 577}, {5, 70, 1000}, {9, 130, 64}, {15, 8, 31},
                              {16, 200, 95}, {67, 13, 95}, {130, 129, 2051}}) {
    auto w = MakeMatrix(Random(rows * cols, 0.5f), ScalarType::kBF16, rows, cols);
    auto x = Random(n * cols);
    std::vector<float> rounded(x.size());
    for (size_t i = 0; i < x.size(); ++i) rounded[i] = Bf16ToFloat(FloatToBf16(x[i]));
    for (const bool with_bias : {true, false}) {
      auto bias = Random(rows);
      std::vector<float> y(n * rows, NAN);
      backend_->Linear(x.data(), n, w.m, with_bias ? bias.data() : nullptr, y.data());
      for (int t = 0; t < n; ++t) {
        for (int r = 0; r < rows; ++r) {
          double ref = with_bias ? bias[r] : 0.0;
          for (int c = 0; c < cols; ++c) ref += double(rounded[t * cols + c]) * w.values[r * cols + c];
          ASSERT_NEAR(y[t * rows + r], ref, 1e-4 * std::sqrt(double(cols)))
              << "n=" << n << " rows=" << rows << " cols=" << cols << " t=" << t << " r=" << r;
        }
      }
    }
  }
}

// Linears (outputs sharing one input, as q/k/v and gate/up do) writes what one Linear per
// output writes, in both precisions, with row counts that split unevenly over the threads
// and, in BF16, over oneDNN's 64-row slices; an output that cannot join (F32 weights, or
// another width) is computed on its own.
TEST_F(CpuOpsTest, LinearsEqualOneLinearPerOutput) {
  struct Restore {
    ~Restore() { cpu::SetComputePrecision(cpu::ComputePrecision::kF32); }
  } restore;
  for (auto precision : {cpu::ComputePrecision::kF32, cpu::ComputePrecision::kBf16}) {
    cpu::SetComputePrecision(precision);
    for (int n : {1, 5, 67}) {
      const int cols = 131;
      auto a = MakeMatrix(Random(33 * cols), ScalarType::kBF16, 33, cols);
      auto b = MakeMatrix(Random(130 * cols), ScalarType::kBF16, 130, cols);
      auto c = MakeMatrix(Random(17 * cols), ScalarType::kF32, 17, cols);
      auto x = Random(n * cols);
      auto bias = Random(130);
      for (const bool with_f32 : {false, true}) {
        std::vector<float> ya(n * 33, NAN), yb(n * 130, NAN), yc(n * 17, NAN);
        std::vector<LinearOut> outs = {{&a.m, nullptr, ya.data()}, {&b.m, bias.data(), yb.data()}};
        if (with_f32) outs.push_back({&c.m, nullptr, yc.data()});
        backend_->Linears(x.data(), n, outs);
        for (const LinearOut& o : outs) {
          std::vector<float> alone(n * o.w->rows, NAN);
          backend_->Linear(x.data(), n, *o.w, o.bias, alone.data());
          for (size_t i = 0; i < alone.size(); ++i) {
            ASSERT_NEAR(o.y[i], alone[i], 1e-5 * std::sqrt(double(cols)))
                << "n=" << n << " rows=" << o.w->rows << " with an F32 output: " << with_f32
                << ", precision " << (precision == cpu::ComputePrecision::kBf16 ? "bf16" : "f32");
          }
        }
      }
    }
  }
}

TEST_F(CpuOpsTest, AddRmsNormAddsTheResidualThenNormalizes) {
  const int n = 3, hidden = 1001;
  auto x = Random(n * hidden), residual = Random(n * hidden), weight = Random(hidden);
  auto expected_residual = residual;
  for (int i = 0; i < n * hidden; ++i) expected_residual[i] += x[i];
  std::vector<float> out(n * hidden, NAN);
  backend_->AddRmsNorm(x.data(), residual.data(), weight.data(), n, hidden, 1e-5f, out.data());
  for (int t = 0; t < n; ++t) {
    double ss = 0;
    for (int i = 0; i < hidden; ++i) ss += std::pow(double(expected_residual[t * hidden + i]), 2);
    const double inv = 1.0 / std::sqrt(ss / hidden + 1e-5);
    for (int i = 0; i < hidden; ++i) {
      ASSERT_FLOAT_EQ(residual[t * hidden + i], expected_residual[t * hidden + i]);
      ASSERT_NEAR(out[t * hidden + i], expected_residual[t * hidden + i] * inv * weight[i], 1e-5);
    }
  }
  // Without x the residual is only normalized.
  auto before = residual;
  backend_->AddRmsNorm(nullptr, residual.data(), weight.data(), n, hidden, 1e-5f, out.data());
  EXPECT_EQ(before, residual);
}

TEST_F(CpuOpsTest, RopeRotatesHalvesByPositionTimesFrequency) {
  const int n = 3, q_heads = 3, kv_heads = 1, hd = 10;
  auto q = Random(n * q_heads * hd), k = Random(n * kv_heads * hd);
  const auto q0 = q, k0 = k;
  std::vector<int32_t> pos = {0, 7, 4000};
  std::vector<float> inv_freq = {1.0f, 0.3f, 0.01f, 0.002f, 1e-4f};
  backend_->Rope(q.data(), k.data(), pos.data(), inv_freq.data(), n, q_heads, kv_heads, hd);
  auto check = [&](const std::vector<float>& before, const std::vector<float>& after, int heads) {
    for (int t = 0; t < n; ++t) {
      for (int h = 0; h < heads; ++h) {
        for (int i = 0; i < hd / 2; ++i) {
          const double a = float(pos[t]) * inv_freq[i];
          const int base = (t * heads + h) * hd;
          const double x1 = before[base + i], x2 = before[base + i + hd / 2];
          ASSERT_NEAR(after[base + i], x1 * std::cos(a) - x2 * std::sin(a), 2e-4);
          ASSERT_NEAR(after[base + i + hd / 2], x2 * std::cos(a) + x1 * std::sin(a), 2e-4);
        }
      }
    }
  };
  check(q0, q, q_heads);
  check(k0, k, kv_heads);
}

TEST_F(CpuOpsTest, SwiGluAndEmbeddingAndGather) {
  auto g = Random(1003), u = Random(1003);
  std::vector<float> out(1003);
  backend_->SwiGlu(g.data(), u.data(), 1003, out.data());
  for (int i = 0; i < 1003; ++i) ASSERT_NEAR(out[i], g[i] / (1 + std::exp(-double(g[i]))) * u[i], 1e-6);

  auto table = MakeMatrix(Random(11 * 7), ScalarType::kBF16, 11, 7);
  std::vector<int32_t> ids = {10, 0, 10, 3};
  std::vector<float> e(4 * 7, NAN);
  backend_->Embed(table.m, ids.data(), 4, e.data());
  for (int t = 0; t < 4; ++t)
    for (int c = 0; c < 7; ++c) ASSERT_EQ(e[t * 7 + c], table.values[ids[t] * 7 + c]);

  std::vector<int32_t> rows = {3, 1};
  std::vector<float> gathered(2 * 7, NAN);
  backend_->GatherRows(e.data(), rows.data(), 2, 7, gathered.data());
  for (int c = 0; c < 7; ++c) {
    EXPECT_EQ(gathered[c], e[3 * 7 + c]);
    EXPECT_EQ(gathered[7 + c], e[1 * 7 + c]);
  }
}

// Attention over a cache whose blocks are deliberately out of order and shared with
// another sequence, against dense attention on the same keys: a whole prefill of one
// sequence (runs of 16 queries over key tiles of 16, windows cutting tiles), a chunk that
// continues it, and single decode tokens.
TEST_F(CpuOpsTest, PagedAttentionMatchesDenseAttentionWithGqaAndWindow) {
  const int block = 4, kv_heads = 2, q_heads = 6, hd = 12, width = kv_heads * hd;
  const int num_blocks = 16;
  std::vector<float> kcache(num_blocks * block * width, NAN), vcache(num_blocks * block * width, NAN);
  // Sequence 0: 37 tokens in 10 scattered blocks; sequence 1: 6 tokens in blocks 0, 11.
  std::vector<std::vector<int32_t>> tables = {{9, 2, 14, 5, 7, 12, 1, 15, 3, 10}, {0, 11, 0, 0, 0, 0, 0, 0, 0, 0}};
  const int lengths[] = {37, 6};
  std::map<std::pair<int, int>, std::pair<std::vector<float>, std::vector<float>>> kv;
  KvLayer layer{kcache.data(), vcache.data(), ScalarType::kF32, block, kv_heads, hd};
  for (int s = 0; s < 2; ++s) {
    for (int p = 0; p < lengths[s]; ++p) {
      auto k = Random(width), v = Random(width);
      int32_t slot = tables[s][p / block] * block + p % block;
      backend_->KvStore(layer, k.data(), v.data(), &slot, 1);
      kv[{s, p}] = {k, v};
    }
  }
  std::vector<int32_t> flat_tables;
  for (auto& t : tables) flat_tables.insert(flat_tables.end(), t.begin(), t.end());
  std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> query_sets;  // seq, pos
  {
    std::vector<int32_t> seq(37, 0), pos(37);
    std::iota(pos.begin(), pos.end(), 0);
    seq.push_back(1);
    pos.push_back(5);
    query_sets.emplace_back(seq, pos);
    query_sets.push_back({{0, 0, 0, 0, 0, 1, 0}, {30, 31, 32, 33, 34, 5, 12}});
  }
  for (const auto& [token_seq, token_pos] : query_sets) {
    const int n = static_cast<int>(token_seq.size());
    auto q = Random(n * q_heads * hd);
    for (int window : {0, 5, 19}) {
      std::vector<float> out(n * q_heads * hd, NAN);
      AttentionArgs a;
      a.q = q.data();
      a.out = out.data();
      a.cache = layer;
      a.block_tables = flat_tables.data();
      a.max_blocks_per_seq = 10;
      a.token_seq = token_seq.data();
      a.token_pos = token_pos.data();
      a.n = n;
      a.q_heads = q_heads;
      a.scale = 0.3f;
      a.sliding_window = window;
      backend_->Attention(a);
      for (int t = 0; t < n; ++t) {
        for (int h = 0; h < q_heads; ++h) {
          const int kvh = h / (q_heads / kv_heads);
          const int first = window > 0 ? std::max(0, token_pos[t] - window + 1) : 0;
          std::vector<double> w;
          for (int p = first; p <= token_pos[t]; ++p) {
            double s = 0;
            for (int i = 0; i < hd; ++i)
              s += double(q[(t * q_heads + h) * hd + i]) * kv[{token_seq[t], p}].first[kvh * hd + i];
            w.push_back(s * 0.3);
          }
          const double mx = *std::max_element(w.begin(), w.end());
          double sum = 0;
          for (double& x : w) sum += (x = std::exp(x - mx));
          for (int i = 0; i < hd; ++i) {
            double ref = 0;
            for (int p = first; p <= token_pos[t]; ++p)
              ref += w[p - first] / sum * kv[{token_seq[t], p}].second[kvh * hd + i];
            ASSERT_NEAR(out[(t * q_heads + h) * hd + i], ref, 1e-5)
                << "token " << t << " head " << h << " window " << window;
          }
        }
      }
    }
  }
}

class SamplingTest : public CpuOpsTest {
 protected:
  int32_t SampleOne(const std::vector<float>& logits, SamplingRow row) {
    int32_t token = -1;
    backend_->Sample(logits.data(), 1, static_cast<int>(logits.size()), &row, &token);
    return token;
  }
};

TEST_F(SamplingTest, GreedyTakesTheLowestIndexOfTheMaximum) {
  std::vector<float> logits = {0.1f, 3.0f, -1.0f, 3.0f, 2.9f};
  EXPECT_EQ(SampleOne(logits, SamplingRow{}), 1);
}

TEST_F(SamplingTest, FiltersKeepOnlyTheirTokensAndFrequenciesFollowTheDistribution) {
  // p ∝ exp(logits): tokens 0..5 have probabilities 0.4, 0.25, 0.15, 0.1, 0.06, 0.04.
  const std::vector<double> p = {0.4, 0.25, 0.15, 0.1, 0.06, 0.04};
  std::vector<float> logits;
  for (double x : p) logits.push_back(static_cast<float>(std::log(x)));
  struct Case {
    SamplingRow row;
    std::vector<int> allowed;
  };
  std::vector<Case> cases = {
      {{1.0f, 0, 1.0f, 0.0f, 0}, {0, 1, 2, 3, 4, 5}},
      {{1.0f, 3, 1.0f, 0.0f, 0}, {0, 1, 2}},
      {{1.0f, 0, 0.7f, 0.0f, 0}, {0, 1, 2}},   // 0.4 + 0.25 < 0.7 <= 0.8
      {{1.0f, 0, 0.6f, 0.0f, 0}, {0, 1}},      // 0.4 < 0.6 <= 0.65
      {{1.0f, 0, 1.0f, 0.3f, 0}, {0, 1, 2}},   // >= 0.3 * 0.4 = 0.12
      // top-k, then top-p over the renormalized two (0.615, 0.385)
      {{1.0f, 2, 0.5f, 0.0f, 0}, {0}},
      {{1.0f, 2, 0.7f, 0.0f, 0}, {0, 1}},
  };
  for (const Case& c : cases) {
    std::vector<int> counts(p.size(), 0);
    const int draws = 20000;
    for (int i = 0; i < draws; ++i) {
      SamplingRow row = c.row;
      row.uniform = (i + 0.5f) / draws;  // a uniform grid: frequencies are exact up to rounding
      const int32_t t = SampleOne(logits, row);
      ASSERT_TRUE(std::find(c.allowed.begin(), c.allowed.end(), t) != c.allowed.end())
          << "token " << t << " outside the kept set (top_k " << c.row.top_k << ", top_p "
          << c.row.top_p << ", min_p " << c.row.min_p << ")";
      ++counts[t];
    }
    double kept = 0;
    for (int a : c.allowed) kept += p[a];
    for (int a : c.allowed) {
      EXPECT_NEAR(counts[a] / double(draws), p[a] / kept, 0.002)
          << "token " << a << " (top_k " << c.row.top_k << ", top_p " << c.row.top_p << ")";
    }
  }
}

TEST_F(SamplingTest, TemperatureSharpensAndFlattens) {
  std::vector<float> logits = {1.0f, 0.0f};
  auto freq0 = [&](float temperature) {
    int zero = 0;
    for (int i = 0; i < 1000; ++i) {
      SamplingRow row{temperature, 0, 1.0f, 0.0f, (i + 0.5f) / 1000};
      zero += SampleOne(logits, row) == 0;
    }
    return zero / 1000.0;
  };
  EXPECT_NEAR(freq0(1.0f), 1 / (1 + std::exp(-1.0)), 0.002);
  EXPECT_NEAR(freq0(0.25f), 1 / (1 + std::exp(-4.0)), 0.002);
  EXPECT_NEAR(freq0(4.0f), 1 / (1 + std::exp(-0.25)), 0.002);
}

}  // namespace
}  // namespace ember::kernels
