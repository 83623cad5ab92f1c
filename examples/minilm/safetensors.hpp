// examples/minilm/safetensors.hpp: reads a .safetensors file.
//
// The format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian unsigned header length N, N bytes of JSON mapping each tensor
// name to {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional
// "__metadata__" object of strings), then the raw little-endian data; the
// offsets count from the first byte after the header. Only F32 tensors are
// handed out here, which is what all-MiniLM-L6-v2 ships.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "json.hpp"

namespace minilm {

class safetensors {
 public:
  struct entry {
    std::string dtype;
    std::vector<std::int64_t> shape;
    std::size_t begin = 0, end = 0;  // byte offsets into data_
  };

  /// Reads the whole file. @throws std::runtime_error naming the file.
  explicit safetensors(const std::string& path) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    unsigned char len_bytes[8];
    if (!in.read(reinterpret_cast<char*>(len_bytes), 8)) fail("shorter than 8 bytes");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
    in.seekg(0, std::ios::end);
    const std::uint64_t file_size = static_cast<std::uint64_t>(in.tellg());
    if (n > file_size - 8 || n > (std::uint64_t(1) << 30)) fail("header length past the end");
    in.seekg(8);
    std::string header(static_cast<std::size_t>(n), '\0');
    if (!in.read(header.data(), static_cast<std::streamsize>(n))) fail("short header");
    data_.resize(static_cast<std::size_t>(file_size - 8 - n));
    if (!in.read(data_.data(), static_cast<std::streamsize>(data_.size()))) fail("short data");

    const json doc = json::parse(header);
    if (doc.type != json::kind::object) fail("header is not a JSON object");
    for (const auto& [name, v] : doc.object) {
      if (name == "__metadata__") continue;
      entry e;
      e.dtype = v.at("dtype").as_string();
      for (const json& d : v.at("shape").array) e.shape.push_back(d.as_int());
      const json& off = v.at("data_offsets");
      if (off.array.size() != 2) fail(name + ": data_offsets is not [begin, end]");
      const long long b = off.array[0].as_int(), en = off.array[1].as_int();
      if (b < 0 || en < b || static_cast<std::uint64_t>(en) > data_.size())
        fail(name + ": data_offsets outside the file");
      e.begin = static_cast<std::size_t>(b);
      e.end = static_cast<std::size_t>(en);
      tensors_.emplace(name, std::move(e));
    }
  }

  const std::map<std::string, entry>& tensors() const { return tensors_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }

  /// Copies F32 tensor `name`, which must have `shape`, into a float vector
  /// (row-major, as stored). @throws std::runtime_error on any mismatch.
  std::vector<float> f32(const std::string& name, const std::vector<std::int64_t>& shape) const {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) fail("no tensor " + name);
    const entry& e = it->second;
    if (e.dtype != "F32") fail(name + ": dtype " + e.dtype + ", expected F32");
    if (e.shape != shape) fail(name + ": shape " + dims(e.shape) + ", expected " + dims(shape));
    std::size_t count = 1;
    for (const auto d : shape) count *= static_cast<std::size_t>(d);
    if (e.end - e.begin != count * 4) fail(name + ": byte size does not match its shape");
    std::vector<float> out(count);
    const unsigned char* p = reinterpret_cast<const unsigned char*>(data_.data()) + e.begin;
    for (std::size_t i = 0; i < count; ++i, p += 4) {
      // Little-endian on any host.
      const std::uint32_t bits = std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 |
                                 std::uint32_t(p[2]) << 16 | std::uint32_t(p[3]) << 24;
      std::memcpy(&out[i], &bits, 4);
    }
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(path_ + ": " + what);
  }
  static std::string dims(const std::vector<std::int64_t>& s) {
    std::string r = "[";
    for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
  }

  std::string path_;
  std::vector<char> data_;
  std::map<std::string, entry> tensors_;
};

}  // namespace minilm
