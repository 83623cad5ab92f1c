// examples/minilm/json.hpp: a small JSON reader, enough for safetensors
// headers and Hugging Face config files. Not a general-purpose library:
// whole documents in memory, numbers as double, objects as ordered lists.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "utf8.hpp"

namespace minilm {

struct json {
  enum class kind { null, boolean, number, string, array, object };
  kind type = kind::null;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<json> array;
  std::vector<std::pair<std::string, json>> object;

  /// The member `key` of an object, or nullptr.
  const json* find(const std::string& key) const {
    for (const auto& kv : object)
      if (kv.first == key) return &kv.second;
    return nullptr;
  }
  /// The member `key`, which must exist.
  const json& at(const std::string& key) const {
    const json* v = find(key);
    if (!v) throw std::runtime_error("JSON: no member \"" + key + "\"");
    return *v;
  }
  long long as_int() const {
    if (type != kind::number || number != static_cast<double>(static_cast<long long>(number)))
      throw std::runtime_error("JSON: expected an integer");
    return static_cast<long long>(number);
  }
  double as_number() const {
    if (type != kind::number) throw std::runtime_error("JSON: expected a number");
    return number;
  }
  const std::string& as_string() const {
    if (type != kind::string) throw std::runtime_error("JSON: expected a string");
    return string;
  }
  bool as_bool() const {
    if (type != kind::boolean) throw std::runtime_error("JSON: expected true or false");
    return boolean;
  }

  /// Parses a whole document.
  /// @throws std::runtime_error naming the offset of the first error.
  static json parse(const std::string& text) {
    parser p{text, 0};
    json v = p.value(0);
    p.skip_space();
    if (p.pos != text.size()) p.fail("trailing characters");
    return v;
  }

 private:
  struct parser {
    const std::string& s;
    std::size_t pos;

    [[noreturn]] void fail(const char* what) const {
      throw std::runtime_error(std::string("JSON: ") + what + " at offset " + std::to_string(pos));
    }
    void skip_space() {
      while (pos < s.size() &&
             (s[pos] == ' ' || s[pos] == '\t' || s[pos] == '\n' || s[pos] == '\r'))
        ++pos;
    }
    bool eat(char c) {
      skip_space();
      if (pos < s.size() && s[pos] == c) {
        ++pos;
        return true;
      }
      return false;
    }
    void expect(char c) {
      if (!eat(c)) fail("unexpected character");
    }
    bool literal(const char* word) {
      std::size_t n = 0;
      while (word[n]) ++n;
      if (s.compare(pos, n, word) != 0) return false;
      pos += n;
      return true;
    }

    json value(int depth) {
      if (depth > 64) fail("nesting too deep");
      skip_space();
      if (pos >= s.size()) fail("unexpected end");
      json v;
      const char c = s[pos];
      if (c == '{') {
        ++pos;
        v.type = kind::object;
        if (eat('}')) return v;
        do {
          skip_space();
          std::string key = str();
          expect(':');
          v.object.emplace_back(std::move(key), value(depth + 1));
        } while (eat(','));
        expect('}');
      } else if (c == '[') {
        ++pos;
        v.type = kind::array;
        if (eat(']')) return v;
        do v.array.push_back(value(depth + 1));
        while (eat(','));
        expect(']');
      } else if (c == '"') {
        v.type = kind::string;
        v.string = str();
      } else if (literal("true")) {
        v.type = kind::boolean;
        v.boolean = true;
      } else if (literal("false")) {
        v.type = kind::boolean;
      } else if (literal("null")) {
      } else if (c == '-' || (c >= '0' && c <= '9')) {
        const char* begin = s.c_str() + pos;
        char* end = nullptr;
        v.type = kind::number;
        v.number = std::strtod(begin, &end);
        if (end == begin) fail("bad number");
        pos += static_cast<std::size_t>(end - begin);
      } else {
        fail("unexpected character");
      }
      return v;
    }

    unsigned hex4() {
      if (pos + 4 > s.size()) fail("short \\u escape");
      unsigned u = 0;
      for (int i = 0; i < 4; ++i) {
        const char h = s[pos++];
        u <<= 4;
        if (h >= '0' && h <= '9')
          u |= unsigned(h - '0');
        else if (h >= 'a' && h <= 'f')
          u |= unsigned(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F')
          u |= unsigned(h - 'A' + 10);
        else
          fail("bad \\u escape");
      }
      return u;
    }

    std::string str() {
      if (pos >= s.size() || s[pos] != '"') fail("expected a string");
      ++pos;
      std::string out;
      while (true) {
        if (pos >= s.size()) fail("unterminated string");
        const char c = s[pos++];
        if (c == '"') return out;
        if (c != '\\') {
          out += c;
          continue;
        }
        if (pos >= s.size()) fail("unterminated string");
        switch (const char e = s[pos++]; e) {
          case '"':
          case '\\':
          case '/':
            out += e;
            break;
          case 'b':
            out += '\b';
            break;
          case 'f':
            out += '\f';
            break;
          case 'n':
            out += '\n';
            break;
          case 'r':
            out += '\r';
            break;
          case 't':
            out += '\t';
            break;
          case 'u': {
            char32_t cp = hex4();
            if (cp >= 0xD800 && cp < 0xDC00 && s.compare(pos, 2, "\\u") == 0) {
              pos += 2;
              const unsigned lo = hex4();
              if (lo < 0xDC00 || lo >= 0xE000) fail("bad surrogate pair");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            append_utf8(out, cp);
            break;
          }
          default:
            fail("bad escape");
        }
      }
    }
  };
};

}  // namespace minilm
