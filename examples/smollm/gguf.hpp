// examples/smollm/gguf.hpp: reads a GGUF file (llama.cpp's model format) and
// dequantises its tensors to float.
//
// The format (version 2 and 3; all integers little-endian):
//
//   "GGUF"  u32 version  u64 tensor_count  u64 kv_count
//   kv_count x  { string key, u32 type, value }
//   tensor_count x  { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
//   padding to `general.alignment` (default 32), then the tensor data; each
//   offset counts from the start of the data and is a multiple of the
//   alignment.
//
// A string is a u64 byte count and the bytes (no terminator). Value types:
// 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string,
// 9 array (u32 element type, u64 count, the elements), 10 u64, 11 i64,
// 12 f64. ne[0] is the fastest-varying dimension: a weight of nn.Linear
// shape [out, in] is stored with ne = {in, out}, row by row.
//
// Everything is bounds-checked: a truncated or corrupt file (a count past
// the end, a string longer than the file, a tensor outside the data, an
// unknown type, a size that overflows) is a std::runtime_error naming the
// file and what is wrong, never a crash or a huge allocation. Counts are
// checked against the bytes left before anything is allocated for them.
//
// Tensor types dequantised here: F32, F16, BF16, and the block formats
// Q4_0, Q4_1 and Q8_0 (32 weights a block; SmolLM2-135M-Instruct.Q4_1.gguf
// uses F32 norms, Q8_0 token embeddings and Q4_1 everywhere else):
//
//   Q4_0  f16 d, 16 bytes q:  x[j] = (lo4(q[j]) - 8) d, x[j+16] = (hi4(q[j]) - 8) d
//   Q4_1  f16 d, f16 m, 16 bytes q:  x[j] = lo4(q[j]) d + m, x[j+16] = hi4(q[j]) d + m
//   Q8_0  f16 d, 32 int8 q:  x[j] = q[j] d
//
// for j in [0, 16) (Q8_0: [0, 32)). d·q is exact in float (11 + 8 bits at
// most), so x is the correctly rounded d·q + m whether or not the compiler
// fuses the multiply-add: the same floats ggml's and the gguf package's
// dequantisers give.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace smollm {

/// ggml tensor types (ggml.h's enum ggml_type) this reader knows by name.
enum class ggml_type : std::uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q4_1 = 3,
  q8_0 = 8,
  bf16 = 30,
};

/// "F32", "Q4_1", ... or "type N" for a type this reader cannot dequantise.
inline std::string type_name(std::uint32_t t) {
  switch (static_cast<ggml_type>(t)) {
    case ggml_type::f32: return "F32";
    case ggml_type::f16: return "F16";
    case ggml_type::q4_0: return "Q4_0";
    case ggml_type::q4_1: return "Q4_1";
    case ggml_type::q8_0: return "Q8_0";
    case ggml_type::bf16: return "BF16";
  }
  return "type " + std::to_string(t);
}

/// Weights per block and bytes per block of a type; {0, 0} if unknown.
struct block_shape {
  std::uint64_t weights = 0, bytes = 0;
};
inline block_shape block_of(std::uint32_t t) {
  switch (static_cast<ggml_type>(t)) {
    case ggml_type::f32: return {1, 4};
    case ggml_type::f16: return {1, 2};
    case ggml_type::bf16: return {1, 2};
    case ggml_type::q4_0: return {32, 18};
    case ggml_type::q4_1: return {32, 20};
    case ggml_type::q8_0: return {32, 34};
  }
  return {};
}

/// IEEE binary16 bits to float (subnormals, infinities and NaN included).
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while (!(mant & 0x400u)) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline std::uint16_t load_u16(const unsigned char* p) {
  return static_cast<std::uint16_t>(p[0] | p[1] << 8);
}
inline std::uint32_t load_u32(const unsigned char* p) {
  return std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 | std::uint32_t(p[2]) << 16 |
         std::uint32_t(p[3]) << 24;
}

/// Dequantises `n` weights of type `t` from `src` (which holds at least
/// n / block.weights · block.bytes bytes; n a multiple of the block size)
/// into `dst`. @throws std::runtime_error for a type it does not know.
inline void dequantize(std::uint32_t t, const unsigned char* src, std::uint64_t n, float* dst) {
  switch (static_cast<ggml_type>(t)) {
    case ggml_type::f32:
      for (std::uint64_t i = 0; i < n; ++i) {
        const std::uint32_t b = load_u32(src + 4 * i);
        std::memcpy(dst + i, &b, 4);
      }
      return;
    case ggml_type::f16:
      for (std::uint64_t i = 0; i < n; ++i) dst[i] = half_to_float(load_u16(src + 2 * i));
      return;
    case ggml_type::bf16:
      for (std::uint64_t i = 0; i < n; ++i) {
        const std::uint32_t b = std::uint32_t(load_u16(src + 2 * i)) << 16;
        std::memcpy(dst + i, &b, 4);
      }
      return;
    case ggml_type::q4_0:
      for (std::uint64_t blk = 0; blk < n / 32; ++blk, src += 18, dst += 32) {
        const float d = half_to_float(load_u16(src));
        for (int j = 0; j < 16; ++j) {
          dst[j] = static_cast<float>((src[2 + j] & 0x0F) - 8) * d;
          dst[j + 16] = static_cast<float>((src[2 + j] >> 4) - 8) * d;
        }
      }
      return;
    case ggml_type::q4_1:
      for (std::uint64_t blk = 0; blk < n / 32; ++blk, src += 20, dst += 32) {
        const float d = half_to_float(load_u16(src)), m = half_to_float(load_u16(src + 2));
        for (int j = 0; j < 16; ++j) {
          dst[j] = static_cast<float>(src[4 + j] & 0x0F) * d + m;
          dst[j + 16] = static_cast<float>(src[4 + j] >> 4) * d + m;
        }
      }
      return;
    case ggml_type::q8_0:
      for (std::uint64_t blk = 0; blk < n / 32; ++blk, src += 34, dst += 32) {
        const float d = half_to_float(load_u16(src));
        for (int j = 0; j < 32; ++j)
          dst[j] = static_cast<float>(static_cast<std::int8_t>(src[2 + j])) * d;
      }
      return;
  }
  throw std::runtime_error("cannot dequantise tensors of " + type_name(t));
}

/// A GGUF file, read whole into memory.
class gguf_file {
 public:
  /// Metadata value types.
  enum class value_type : std::uint32_t {
    u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
    string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
  };

  /// One metadata value: a scalar, a string, or an array of them.
  struct value {
    value_type type = value_type::u8;
    std::uint64_t u = 0;  ///< unsigned integers and bool
    std::int64_t i = 0;   ///< signed integers
    double f = 0;         ///< floats
    std::string s;        ///< strings
    value_type element = value_type::u8;  ///< arrays: the element type
    std::vector<value> items;             ///< arrays: the elements
  };

  /// A tensor's description; its data is data() + offset.
  struct tensor {
    std::string name;
    std::vector<std::uint64_t> ne;  ///< dimensions, fastest first
    std::uint32_t type = 0;
    std::uint64_t offset = 0;  ///< from the start of the data section
    std::uint64_t count = 0;   ///< weights
    std::uint64_t bytes = 0;   ///< bytes of data
  };

  /// Reads and checks `path`. @throws std::runtime_error naming the file.
  explicit gguf_file(const std::string& path) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    if (size < 0) fail("cannot tell the file's size");
    in.seekg(0);
    bytes_.resize(static_cast<std::size_t>(size));
    if (size > 0 && !in.read(reinterpret_cast<char*>(bytes_.data()), size)) fail("read error");
    parse();
  }

  /// Parses `bytes` as a GGUF file named `name` (for tests).
  gguf_file(std::vector<unsigned char> bytes, const std::string& name)
      : path_(name), bytes_(std::move(bytes)) {
    parse();
  }

  std::uint32_t version() const { return version_; }
  const std::map<std::string, value>& metadata() const { return kv_; }
  const std::vector<tensor>& tensors() const { return tensors_; }

  /// The value of `key`, or nullptr.
  const value* find(const std::string& key) const {
    const auto it = kv_.find(key);
    return it == kv_.end() ? nullptr : &it->second;
  }
  /// The value of `key`. @throws std::runtime_error if it is missing.
  const value& at(const std::string& key) const {
    const value* v = find(key);
    if (!v) fail("no metadata key " + key);
    return *v;
  }
  /// An integer value of any integer type, in [lo, hi].
  std::int64_t integer(const std::string& key, std::int64_t lo = 0,
                       std::int64_t hi = std::numeric_limits<std::int32_t>::max()) const {
    const value& v = at(key);
    std::int64_t r = 0;
    switch (v.type) {
      case value_type::u8: case value_type::u16: case value_type::u32: case value_type::u64:
        if (v.u > static_cast<std::uint64_t>(hi)) fail(key + ": " + std::to_string(v.u) + " too large");
        r = static_cast<std::int64_t>(v.u);
        break;
      case value_type::i8: case value_type::i16: case value_type::i32: case value_type::i64:
        r = v.i;
        break;
      default:
        fail(key + ": not an integer");
    }
    if (r < lo || r > hi)
      fail(key + ": " + std::to_string(r) + " outside [" + std::to_string(lo) + ", " +
           std::to_string(hi) + "]");
    return r;
  }
  /// A float value (f32 or f64).
  double number(const std::string& key) const {
    const value& v = at(key);
    if (v.type != value_type::f32 && v.type != value_type::f64) fail(key + ": not a float");
    return v.f;
  }
  /// A string value.
  const std::string& string(const std::string& key) const {
    const value& v = at(key);
    if (v.type != value_type::string) fail(key + ": not a string");
    return v.s;
  }
  /// An array value whose elements have type `element`.
  const std::vector<value>& array(const std::string& key, value_type element) const {
    const value& v = at(key);
    if (v.type != value_type::array || v.element != element)
      fail(key + ": not an array of the expected type");
    return v.items;
  }

  /// The tensor called `name`, or nullptr.
  const tensor* find_tensor(const std::string& name) const {
    const auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : &tensors_[it->second];
  }

  /// Tensor `name` dequantised to float, row-major with the fastest
  /// dimension last ([ne[1], ne[0]] for a matrix). `ne` must match.
  /// @throws std::runtime_error if the tensor is missing, has other
  ///         dimensions, or a type this reader cannot dequantise.
  std::vector<float> floats(const std::string& name, const std::vector<std::uint64_t>& ne) const {
    const tensor* t = find_tensor(name);
    if (!t) fail("no tensor " + name);
    if (t->ne != ne) fail(name + ": dimensions " + dims(t->ne) + ", expected " + dims(ne));
    std::vector<float> out(static_cast<std::size_t>(t->count));
    try {
      dequantize(t->type, data_ + t->offset, t->count, out.data());
    } catch (const std::runtime_error& e) {
      fail(name + ": " + e.what());
    }
    return out;
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(path_ + ": " + what);
  }

 private:
  // A cursor over the header; every read checks the bytes left.
  struct reader {
    const gguf_file& file;
    std::size_t pos = 0;
    std::size_t left() const { return file.bytes_.size() - pos; }
    const unsigned char* take(std::uint64_t n, const char* what) {
      if (n > left())
        file.fail(std::string("truncated: ") + what + " needs " + std::to_string(n) +
                  " bytes at offset " + std::to_string(pos) + ", " + std::to_string(left()) +
                  " left");
      const unsigned char* p = file.bytes_.data() + pos;
      pos += static_cast<std::size_t>(n);
      return p;
    }
    std::uint64_t u(int bytes, const char* what) {
      const unsigned char* p = take(static_cast<std::uint64_t>(bytes), what);
      std::uint64_t r = 0;
      for (int k = bytes - 1; k >= 0; --k) r = (r << 8) | p[k];
      return r;
    }
    std::string str(const char* what) {
      const std::uint64_t n = u(8, what);
      const unsigned char* p = take(n, what);
      return std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
    }
  };

  static std::string dims(const std::vector<std::uint64_t>& ne) {
    std::string r = "[";
    for (std::size_t i = 0; i < ne.size(); ++i) r += (i ? ", " : "") + std::to_string(ne[i]);
    return r + "]";
  }

  // The fewest bytes a value of type t occupies (to bound counts before
  // allocating); 0 for an unknown type.
  static std::uint64_t min_bytes(std::uint32_t t) {
    switch (static_cast<value_type>(t)) {
      case value_type::u8: case value_type::i8: case value_type::boolean: return 1;
      case value_type::u16: case value_type::i16: return 2;
      case value_type::u32: case value_type::i32: case value_type::f32: return 4;
      case value_type::u64: case value_type::i64: case value_type::f64: return 8;
      case value_type::string: return 8;
      case value_type::array: return 12;
    }
    return 0;
  }

  value read_value(reader& r, std::uint32_t t, const std::string& key, int depth) {
    value v;
    v.type = static_cast<value_type>(t);
    switch (v.type) {
      case value_type::u8: v.u = r.u(1, "a u8"); break;
      case value_type::u16: v.u = r.u(2, "a u16"); break;
      case value_type::u32: v.u = r.u(4, "a u32"); break;
      case value_type::u64: v.u = r.u(8, "a u64"); break;
      case value_type::i8: v.i = static_cast<std::int8_t>(r.u(1, "an i8")); break;
      case value_type::i16: v.i = static_cast<std::int16_t>(r.u(2, "an i16")); break;
      case value_type::i32: v.i = static_cast<std::int32_t>(r.u(4, "an i32")); break;
      case value_type::i64: v.i = static_cast<std::int64_t>(r.u(8, "an i64")); break;
      case value_type::f32: {
        const std::uint32_t b = static_cast<std::uint32_t>(r.u(4, "an f32"));
        float f;
        std::memcpy(&f, &b, 4);
        v.f = f;
        break;
      }
      case value_type::f64: {
        const std::uint64_t b = r.u(8, "an f64");
        std::memcpy(&v.f, &b, 8);
        break;
      }
      case value_type::boolean:
        v.u = r.u(1, "a bool");
        if (v.u > 1) fail(key + ": a bool that is neither 0 nor 1");
        break;
      case value_type::string: v.s = r.str("a string"); break;
      case value_type::array: {
        if (depth > 0) fail(key + ": arrays nested deeper than one level");
        const std::uint32_t et = static_cast<std::uint32_t>(r.u(4, "an array type"));
        const std::uint64_t n = r.u(8, "an array length");
        const std::uint64_t each = min_bytes(et);
        if (each == 0) fail(key + ": array of unknown type " + std::to_string(et));
        if (n > r.left() / each)
          fail("truncated: " + key + ": an array of " + std::to_string(n) +
               " elements cannot fit in the " + std::to_string(r.left()) + " bytes left");
        v.element = static_cast<value_type>(et);
        v.items.reserve(static_cast<std::size_t>(n));
        for (std::uint64_t k = 0; k < n; ++k) v.items.push_back(read_value(r, et, key, depth + 1));
        break;
      }
      default:
        fail(key + ": unknown value type " + std::to_string(t));
    }
    return v;
  }

  void parse() {
    reader r{*this};
    const unsigned char* magic = r.take(4, "the magic");
    if (std::memcmp(magic, "GGUF", 4) != 0) fail("not a GGUF file (no \"GGUF\" magic)");
    version_ = static_cast<std::uint32_t>(r.u(4, "the version"));
    if (version_ != 2 && version_ != 3)
      fail("GGUF version " + std::to_string(version_) + " (only 2 and 3 are read)");
    const std::uint64_t n_tensors = r.u(8, "the tensor count");
    const std::uint64_t n_kv = r.u(8, "the metadata count");
    // A key-value pair takes at least 8 + 4 + 1 bytes, a tensor info 8 + 4 + 4 + 8.
    if (n_kv > r.left() / 13) fail("truncated: " + std::to_string(n_kv) + " metadata entries");
    for (std::uint64_t k = 0; k < n_kv; ++k) {
      std::string key = r.str("a metadata key");
      const std::uint32_t t = static_cast<std::uint32_t>(r.u(4, "a value type"));
      value v = read_value(r, t, key, 0);
      if (!kv_.emplace(key, std::move(v)).second) fail("metadata key " + key + " twice");
    }
    if (n_tensors > r.left() / 24)
      fail("truncated: " + std::to_string(n_tensors) + " tensors cannot fit");
    std::uint64_t alignment = 32;
    if (find("general.alignment")) {
      alignment = static_cast<std::uint64_t>(integer("general.alignment", 1, 1 << 20));
      if (alignment & (alignment - 1)) fail("general.alignment is not a power of two");
    }
    tensors_.reserve(static_cast<std::size_t>(n_tensors));
    for (std::uint64_t k = 0; k < n_tensors; ++k) {
      tensor t;
      t.name = r.str("a tensor name");
      const std::uint64_t n_dims = r.u(4, "a tensor's dimension count");
      if (n_dims < 1 || n_dims > 4)
        fail(t.name + ": " + std::to_string(n_dims) + " dimensions (1 to 4 allowed)");
      t.count = 1;
      for (std::uint64_t d = 0; d < n_dims; ++d) {
        const std::uint64_t e = r.u(8, "a tensor dimension");
        if (e == 0 || e > (std::uint64_t(1) << 40) || t.count > (std::uint64_t(1) << 40) / e)
          fail(t.name + ": dimension " + std::to_string(e) + " is zero or too large");
        t.ne.push_back(e);
        t.count *= e;
      }
      t.type = static_cast<std::uint32_t>(r.u(4, "a tensor type"));
      t.offset = r.u(8, "a tensor offset");
      const block_shape b = block_of(t.type);
      if (b.weights == 0) fail(t.name + ": unsupported tensor " + type_name(t.type));
      if (t.ne[0] % b.weights != 0)
        fail(t.name + ": rows of " + std::to_string(t.ne[0]) + " weights are not whole " +
             type_name(t.type) + " blocks");
      t.bytes = t.count / b.weights * b.bytes;
      if (t.offset % alignment != 0) fail(t.name + ": offset not aligned");
      if (!by_name_.emplace(t.name, tensors_.size()).second) fail("tensor " + t.name + " twice");
      tensors_.push_back(std::move(t));
    }
    const std::uint64_t start = (r.pos + alignment - 1) / alignment * alignment;
    if (start > bytes_.size()) fail("truncated: no tensor data");
    data_ = bytes_.data() + start;
    const std::uint64_t data_size = bytes_.size() - start;
    for (const tensor& t : tensors_)
      if (t.offset > data_size || t.bytes > data_size - t.offset)
        fail("truncated: tensor " + t.name + " (" + std::to_string(t.bytes) + " bytes at " +
             std::to_string(t.offset) + ") ends past the file's " + std::to_string(data_size) +
             " bytes of data");
  }

  std::string path_;
  std::vector<unsigned char> bytes_;
  const unsigned char* data_ = nullptr;
  std::uint32_t version_ = 0;
  std::map<std::string, value> kv_;
  std::vector<tensor> tensors_;
  std::map<std::string, std::size_t> by_name_;
};

}  // namespace smollm
