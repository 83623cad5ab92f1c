// The GGUF reader of examples/smollm (gguf.hpp) on small synthetic files:
// a valid file reads back; every truncation and a set of targeted
// corruptions are a std::runtime_error with a clear message (never a crash,
// which the sanitizer run would catch); random byte flips either read or
// throw; and the block dequantisers give hand-computed values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../examples/smollm/gguf.hpp"

namespace test_smollm_gguf {

using smollm::gguf_file;

// A little-endian byte writer for building GGUF files.
struct writer {
  std::vector<unsigned char> b;
  void u(std::uint64_t v, int bytes) {
    for (int k = 0; k < bytes; ++k) b.push_back(static_cast<unsigned char>(v >> (8 * k)));
  }
  void str(const std::string& s) {
    u(s.size(), 8);
    b.insert(b.end(), s.begin(), s.end());
  }
  void f32(float f) {
    std::uint32_t v;
    std::memcpy(&v, &f, 4);
    u(v, 4);
  }
  void pad(std::size_t alignment) {
    while (b.size() % alignment) b.push_back(0);
  }
};

// The Q4_1 block of the tests: d = 0.5 (f16 0x3800), m = -1 (0xBC00),
// q[j] = j in the low nibble and 15 - j in the high one, so
// x[j] = 0.5 j - 1 and x[j + 16] = 0.5 (15 - j) - 1.
void q4_1_block(writer& w) {
  w.u(0x3800, 2);
  w.u(0xBC00, 2);
  for (int j = 0; j < 16; ++j) w.u(static_cast<unsigned>(j | (15 - j) << 4), 1);
}

// Offsets of interesting fields in the file made by valid_file().
struct layout {
  std::size_t version, n_tensors, n_kv, name_len, array_len, kv_type, n_dims, dim0, ttype,
      offset1, data;
};

std::vector<unsigned char> valid_file(layout* at = nullptr) {
  writer w;
  layout l{};
  w.b = {'G', 'G', 'U', 'F'};
  l.version = w.b.size();
  w.u(3, 4);
  l.n_tensors = w.b.size();
  w.u(2, 8);
  l.n_kv = w.b.size();
  w.u(3, 8);
  // general.architecture = "llama" (string)
  l.name_len = w.b.size();
  w.str("general.architecture");
  l.kv_type = w.b.size();
  w.u(8, 4);
  w.str("llama");
  // llama.block_count = 30 (u32)
  w.str("llama.block_count");
  w.u(4, 4);
  w.u(30, 4);
  // tokenizer.ggml.tokens = ["a", "bc"] (array of strings)
  w.str("tokenizer.ggml.tokens");
  w.u(9, 4);
  w.u(8, 4);
  l.array_len = w.b.size();
  w.u(2, 8);
  w.str("a");
  w.str("bc");
  // Tensor 0: "norm", F32 [4] at 0; tensor 1: "w", Q4_1 [32, 2] at 32.
  w.str("norm");
  l.n_dims = w.b.size();
  w.u(1, 4);
  l.dim0 = w.b.size();
  w.u(4, 8);
  w.u(0, 4);
  w.u(0, 8);
  w.str("w");
  w.u(2, 4);
  w.u(32, 8);
  w.u(2, 8);
  l.ttype = w.b.size();
  w.u(3, 4);
  l.offset1 = w.b.size();
  w.u(32, 8);
  w.pad(32);
  l.data = w.b.size();
  for (float f : {1.0f, -2.0f, 0.25f, 3.5f}) w.f32(f);
  w.pad(32);
  q4_1_block(w);
  q4_1_block(w);
  if (at) *at = l;
  return w.b;
}

template <class T>
void put(std::vector<unsigned char>& b, std::size_t at, T v, int bytes = sizeof(T)) {
  for (int k = 0; k < bytes; ++k) b[at + k] = static_cast<unsigned char>(std::uint64_t(v) >> (8 * k));
}

// The reader's message for `bytes`, or "" if it reads.
std::string error_of(std::vector<unsigned char> bytes) {
  try {
    const gguf_file f(std::move(bytes), "test.gguf");
    for (const auto& t : f.tensors()) (void)f.floats(t.name, t.ne);
    return "";
  } catch (const std::runtime_error& e) {
    return e.what();
  }
}

TEST(SmollmGguf, ValidFileReadsBack) {
  const gguf_file f(valid_file(), "test.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.string("general.architecture"), "llama");
  EXPECT_EQ(f.integer("llama.block_count"), 30);
  const auto& toks = f.array("tokenizer.ggml.tokens", gguf_file::value_type::string);
  ASSERT_EQ(toks.size(), 2u);
  EXPECT_EQ(toks[1].s, "bc");
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.floats("norm", {4}), (std::vector<float>{1.0f, -2.0f, 0.25f, 3.5f}));
  const std::vector<float> w = f.floats("w", {32, 2});
  ASSERT_EQ(w.size(), 64u);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(w[j], 0.5f * j - 1) << j;
    EXPECT_EQ(w[j + 16], 0.5f * (15 - j) - 1) << j;
    EXPECT_EQ(w[32 + j], w[j]);
  }
  EXPECT_THROW(f.floats("w", {2, 32}), std::runtime_error);  // wrong dims
  EXPECT_THROW(f.floats("missing", {4}), std::runtime_error);
  EXPECT_THROW(f.integer("general.architecture"), std::runtime_error);  // not an integer
}

TEST(SmollmGguf, EveryTruncationIsAnError) {
  const std::vector<unsigned char> full = valid_file();
  for (std::size_t n = 0; n < full.size(); ++n) {
    const std::string e = error_of(std::vector<unsigned char>(full.begin(), full.begin() + n));
    EXPECT_NE(e, "") << "a file cut to " << n << " bytes read";
    EXPECT_NE(e.find("truncated"), std::string::npos) << n << ": " << e;
  }
}

TEST(SmollmGguf, CorruptionsAreClearErrors) {
  layout l;
  const std::vector<unsigned char> good = valid_file(&l);
  auto corrupt = [&](auto change) {
    std::vector<unsigned char> b = good;
    change(b);
    return error_of(b);
  };
  auto expect = [](const std::string& e, const char* part) {
    EXPECT_NE(e.find(part), std::string::npos) << "message: \"" << e << "\", expected " << part;
    EXPECT_EQ(e.rfind("test.gguf: ", 0), 0u) << e;
  };
  expect(corrupt([](auto& b) { b[0] = 'X'; }), "not a GGUF file");
  expect(corrupt([&](auto& b) { put(b, l.version, 1u, 4); }), "version 1");
  expect(corrupt([&](auto& b) { put(b, l.n_tensors, ~0ull, 8); }), "tensors cannot fit");
  expect(corrupt([&](auto& b) { put(b, l.n_kv, 1ull << 60, 8); }), "metadata entries");
  expect(corrupt([&](auto& b) { put(b, l.name_len, 1ull << 62, 8); }), "truncated");
  expect(corrupt([&](auto& b) { put(b, l.array_len, 1ull << 61, 8); }), "cannot fit");
  expect(corrupt([&](auto& b) { put(b, l.kv_type, 77u, 4); }), "unknown value type 77");
  expect(corrupt([&](auto& b) { put(b, l.n_dims, 5u, 4); }), "5 dimensions");
  expect(corrupt([&](auto& b) { put(b, l.dim0, 0ull, 8); }), "zero or too large");
  expect(corrupt([&](auto& b) { put(b, l.dim0, 1ull << 50, 8); }), "zero or too large");
  expect(corrupt([&](auto& b) { put(b, l.ttype, 99u, 4); }), "unsupported tensor type 99");
  expect(corrupt([&](auto& b) { put(b, l.offset1, 33ull, 8); }), "offset not aligned");
  expect(corrupt([&](auto& b) { put(b, l.offset1, 64ull, 8); }), "ends past the file");
  expect(corrupt([&](auto& b) { put(b, l.offset1, 1ull << 63, 8); }), "ends past the file");
}

TEST(SmollmGguf, RandomByteFlipsReadOrThrow) {
  const std::vector<unsigned char> good = valid_file();
  std::mt19937 rng(21);
  std::uniform_int_distribution<std::size_t> pos(0, good.size() - 1);
  std::uniform_int_distribution<int> byte(0, 255), flips(1, 4);
  int errors = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<unsigned char> b = good;
    for (int k = flips(rng); k > 0; --k) b[pos(rng)] = static_cast<unsigned char>(byte(rng));
    errors += error_of(std::move(b)).empty() ? 0 : 1;
  }
  EXPECT_GT(errors, 0);
}

TEST(SmollmGguf, BlockDequantisers) {
  // Q4_1: the block above, by hand.
  writer w;
  q4_1_block(w);
  float x[32];
  smollm::dequantize(3, w.b.data(), 32, x);
  EXPECT_EQ(x[0], -1.0f);
  EXPECT_EQ(x[5], 1.5f);
  EXPECT_EQ(x[15], 6.5f);
  EXPECT_EQ(x[16], 6.5f);
  EXPECT_EQ(x[31], -1.0f);
  // Q8_0: d = 0.25 (0x3400), q[j] = j - 16.
  writer q8;
  q8.u(0x3400, 2);
  for (int j = 0; j < 32; ++j) q8.u(static_cast<unsigned>(static_cast<std::uint8_t>(j - 16)), 1);
  smollm::dequantize(8, q8.b.data(), 32, x);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(x[j], 0.25f * (j - 16)) << j;
  // Q4_0: d = 2 (0x4000), low nibble 0 (-8), high nibble 15 (+7).
  writer q4;
  q4.u(0x4000, 2);
  for (int j = 0; j < 16; ++j) q4.u(0xF0, 1);
  smollm::dequantize(2, q4.b.data(), 32, x);
  EXPECT_EQ(x[0], -16.0f);
  EXPECT_EQ(x[16], 14.0f);
  // half -> float: one, a subnormal, the largest, infinity.
  EXPECT_EQ(smollm::half_to_float(0x3C00), 1.0f);
  EXPECT_EQ(smollm::half_to_float(0x0001), 5.9604644775390625e-8f);
  EXPECT_EQ(smollm::half_to_float(0x7BFF), 65504.0f);
  EXPECT_TRUE(std::isinf(smollm::half_to_float(0xFC00)));
  EXPECT_THROW(smollm::dequantize(12, q4.b.data(), 32, x), std::runtime_error);
}

}  // namespace test_smollm_gguf
