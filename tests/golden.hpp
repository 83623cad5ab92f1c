// tests/golden.hpp: reader for the golden files in tests/data/, written by
// PyTorch through tools/make_golden.py (which says how to install torch and
// regenerate them). The tests need no Python.
//
// File format "attn-golden 1" (one case per file, <case>.golden)
// ----------------------------------------------------------------
// A text header of '\n'-terminated ASCII lines, then raw data:
//
//   attn-golden 1
//   meta <key> <value...>                               0 or more; value = rest of line
//   array <name> <dtype> <rank> <d0> ... <d(rank-1)>    one per array
//   end
//   <data of every array in header order: row-major (C order),
//    little-endian, no padding between arrays>
//
// dtype: f32 (IEEE float32) or u8 (one byte; bool masks as 0/1). The file size
// must be exactly header + data. Meta keys every file has: case, op (sdpa |
// mha | sdpa_mod), torch (version), layout; mask conventions are in
// *_convention keys (SDPA bool attn_mask: true = may attend;
// nn.MultiheadAttention's key_padding_mask / bool attn_mask: true = NOT
// allowed).
//
// golden::load(name) reads tests/data/<name>.golden and returns every array
// as float (u8 values become 0.0f / 1.0f) with its dims; it throws
// std::runtime_error naming the file on a missing file or a malformed one.
//
// Where tests/data is: the macro ATTN_TEST_DATA_DIR when defined, else the
// directory "data" next to this header, found from __FILE__ (absolute under
// CMake; relative to the working directory when compiled by hand with a
// relative path, e.g. run from the repository root).
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace golden {

/// One named array: values converted to float, row-major, with its extents.
struct array {
  std::string dtype;            ///< as stored: "f32" or "u8"
  std::vector<int64_t> dims;    ///< extents, outermost first (empty for rank 0)
  std::vector<float> values;    ///< product(dims) elements, row-major

  int64_t size() const {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  }
  std::string dims_string() const {
    std::string s = "[";
    for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
    return s + "]";
  }
};

/// One golden case: its meta lines and its arrays, in file order.
struct file {
  std::string path;
  std::map<std::string, std::string> meta;
  std::vector<std::string> order;  ///< array names in file order
  std::map<std::string, array> arrays;

  bool has(const std::string& name) const { return arrays.count(name) != 0; }

  /// The named array; throws naming the file when it is absent.
  const array& at(const std::string& name) const {
    auto it = arrays.find(name);
    if (it == arrays.end())
      throw std::runtime_error("golden: " + path + " has no array '" + name + "'");
    return it->second;
  }

  /// The meta value of `key`; throws naming the file when it is absent.
  const std::string& meta_at(const std::string& key) const {
    auto it = meta.find(key);
    if (it == meta.end())
      throw std::runtime_error("golden: " + path + " has no meta '" + key + "'");
    return it->second;
  }
};

/// The directory holding the golden files (without a trailing slash).
inline std::string data_dir() {
#ifdef ATTN_TEST_DATA_DIR
  return ATTN_TEST_DATA_DIR;
#else
  std::string here = __FILE__;
  const auto slash = here.find_last_of("/\\");
  return (slash == std::string::npos ? std::string(".") : here.substr(0, slash)) + "/data";
#endif
}

namespace detail {

inline float load_f32_le(const unsigned char* p) {
  const uint32_t u = static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
                     static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

}  // namespace detail

/// Reads the golden file at `path`.
inline file load_path(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw std::runtime_error(
        "golden: cannot open '" + path +
        "' (golden files live in tests/data and are found next to tests/golden.hpp as "
        "compiled, or in ATTN_TEST_DATA_DIR when defined; a relative path is relative to the "
        "working directory; regenerate missing files with tools/make_golden.py)");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto bad = [&](const std::string& why) {
    return std::runtime_error("golden: " + path + ": " + why);
  };

  file f;
  f.path = path;
  std::size_t pos = 0;
  auto next_line = [&](std::string& line) {
    const std::size_t nl = bytes.find('\n', pos);
    if (nl == std::string::npos) throw bad("header not terminated by an 'end' line");
    line = bytes.substr(pos, nl - pos);
    pos = nl + 1;
  };
  std::string line;
  next_line(line);
  if (line != "attn-golden 1") throw bad("first line is '" + line + "', expected 'attn-golden 1'");
  for (;;) {
    next_line(line);
    if (line == "end") break;
    std::istringstream ls(line);
    std::string kind;
    ls >> kind;
    if (kind == "meta") {
      std::string key, value;
      ls >> key;
      std::getline(ls >> std::ws, value);
      f.meta[key] = value;
    } else if (kind == "array") {
      std::string name;
      array a;
      int rank = -1;
      ls >> name >> a.dtype >> rank;
      if (!ls || name.empty() || rank < 0) throw bad("malformed array line '" + line + "'");
      if (a.dtype != "f32" && a.dtype != "u8") throw bad("unknown dtype in '" + line + "'");
      for (int r = 0; r < rank; ++r) {
        int64_t d = -1;
        ls >> d;
        if (!ls || d < 0) throw bad("malformed dims in '" + line + "'");
        a.dims.push_back(d);
      }
      if (f.arrays.count(name)) throw bad("array '" + name + "' appears twice");
      f.order.push_back(name);
      f.arrays.emplace(name, std::move(a));
    } else {
      throw bad("unknown header line '" + line + "'");
    }
  }

  for (const std::string& name : f.order) {
    array& a = f.arrays.at(name);
    const std::size_t n = static_cast<std::size_t>(a.size());
    const std::size_t width = a.dtype == "f32" ? 4 : 1;
    if (bytes.size() - pos < n * width)
      throw bad("data of array '" + name + "' " + a.dims_string() + " runs past the end of the file");
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data() + pos);
    a.values.resize(n);
    for (std::size_t i = 0; i < n; ++i)
      a.values[i] = width == 4 ? detail::load_f32_le(p + 4 * i) : static_cast<float>(p[i]);
    pos += n * width;
  }
  if (pos != bytes.size())
    throw bad(std::to_string(bytes.size() - pos) + " bytes after the last array");
  return f;
}

/// Reads data_dir()/<name>.golden.
inline file load(const std::string& name) { return load_path(data_dir() + "/" + name + ".golden"); }

}  // namespace golden
