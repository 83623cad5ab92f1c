// examples/smollm/tokenizer.hpp: the byte-level BPE tokenizer (GPT-2's) and
// the ChatML chat template of a GGUF file's metadata.
//
// From the metadata: tokenizer.ggml.model "gpt2", tokenizer.ggml.tokens (the
// vocabulary, ids in order), tokenizer.ggml.token_type (3 = control: the
// special tokens <|im_start|>, <|im_end|>, ...), tokenizer.ggml.merges ("a b"
// in priority order) and tokenizer.ggml.pre, the pre-tokenizer. Encoding:
//
//   1. the text is cut at every occurrence of a control token's text (the
//      longest at a position wins), which becomes that token;
//   2. pre-tokenizer "smollm" (SmolLM2's tokenizer.json: Digits with
//      individual_digits, then ByteLevel's regex; llama.cpp's "smollm"):
//      every \p{N} character is a piece of its own, and the rest is split by
//      GPT-2's pattern, first alternative that matches at each position:
//        's|'t|'re|'ve|'m|'ll|'d | ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+
//        | \s+(?!\S) | \s+
//      ("gpt2" is the same without the digit pieces);
//   3. each piece's UTF-8 bytes are mapped to GPT-2's printable stand-ins
//      (bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
//      other 68 bytes for U+0100...), one symbol per byte;
//   4. BPE: the adjacent pair with the best (lowest) merge rank is merged,
//      the leftmost first among equals, until no pair has a rank; each
//      symbol left is a vocabulary entry.
//
// Decoding maps a token's stand-ins back to bytes; a control token decodes
// to its own text. Letters and numbers above ASCII come from Unicode 14
// tables (unicode_tables.hpp); \s is Unicode White_Space.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../minilm/utf8.hpp"
#include "gguf.hpp"
#include "unicode_tables.hpp"

namespace smollm {

namespace detail {

template <std::size_t N>
inline bool in_table(const char32_t (&table)[N][2], char32_t c) {
  const auto* it = std::upper_bound(std::begin(table), std::end(table), c,
                                    [](char32_t v, const char32_t(&r)[2]) { return v < r[0]; });
  return it != std::begin(table) && c <= (*(it - 1))[1];
}

inline bool is_letter(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  return in_table(unicode::letter, c);
}
inline bool is_number(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return in_table(unicode::number, c);
}
inline bool is_space(char32_t c) {  // Unicode White_Space
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// GPT-2's pattern over s[begin, end): appends the pieces' [first, last).
inline void split_gpt2(const std::u32string& s, std::size_t begin, std::size_t end,
                       std::vector<std::pair<std::size_t, std::size_t>>& out) {
  std::size_t i = begin;
  auto run = [&](std::size_t j, auto pred) {
    while (j < end && pred(s[j])) ++j;
    return j;
  };
  auto other = [](char32_t c) { return !is_space(c) && !is_letter(c) && !is_number(c); };
  while (i < end) {
    const char32_t c = s[i];
    // 's 't 're 've 'm 'll 'd
    if (c == '\'' && i + 1 < end) {
      const char32_t a = s[i + 1], b = i + 2 < end ? s[i + 2] : 0;
      std::size_t n = 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd') n = 2;
      else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) n = 3;
      if (n) {
        out.emplace_back(i, i + n);
        i += n;
        continue;
      }
    }
    // An optional space, then letters, numbers or other characters.
    const std::size_t j = (c == ' ' && i + 1 < end) ? i + 1 : i;
    const char32_t d = s[j];
    std::size_t k = j;
    if (is_letter(d)) k = run(j, is_letter);
    else if (is_number(d)) k = run(j, is_number);
    else if (other(d)) k = run(j, other);
    if (k > j) {
      out.emplace_back(i, k);
      i = k;
      continue;
    }
    // Whitespace: \s+(?!\S) leaves the last one before a non-space (to join
    // the next piece as its " ?"); a lone one is \s+.
    k = run(i, is_space);
    if (k < end && k - i >= 2) --k;
    out.emplace_back(i, k);
    i = k;
  }
}

}  // namespace detail

class bpe_tokenizer {
 public:
  /// Reads the vocabulary, merges and control tokens from the metadata.
  /// @throws std::runtime_error if they are missing or inconsistent, or the
  ///         tokenizer is not byte-level BPE with a known pre-tokenizer.
  explicit bpe_tokenizer(const gguf_file& f) {
    using vt = gguf_file::value_type;
    if (f.string("tokenizer.ggml.model") != "gpt2")
      f.fail("tokenizer.ggml.model is \"" + f.string("tokenizer.ggml.model") +
             "\", only \"gpt2\" (byte-level BPE) is read");
    const std::string pre = f.find("tokenizer.ggml.pre") ? f.string("tokenizer.ggml.pre") : "gpt2";
    if (pre != "smollm" && pre != "gpt2")
      f.fail("tokenizer.ggml.pre \"" + pre + "\" is not one this tokenizer knows (smollm, gpt2)");
    split_digits_ = pre == "smollm";
    for (const auto& v : f.array("tokenizer.ggml.tokens", vt::string)) tokens_.push_back(v.s);
    const auto& types = f.array("tokenizer.ggml.token_type", vt::i32);
    if (types.size() != tokens_.size())
      f.fail("tokenizer.ggml.token_type has " + std::to_string(types.size()) +
             " entries for " + std::to_string(tokens_.size()) + " tokens");
    for (std::size_t i = 0; i < tokens_.size(); ++i) {
      if (!ids_.emplace(tokens_[i], static_cast<int>(i)).second && types[i].i == 1)
        f.fail("token " + tokens_[i] + " twice in the vocabulary");
      if (types[i].i == 3 || types[i].i == 4) control_.push_back(static_cast<int>(i));
    }
    is_control_.assign(tokens_.size(), false);
    for (int id : control_) is_control_[static_cast<std::size_t>(id)] = true;
    int rank = 0;
    for (const auto& v : f.array("tokenizer.ggml.merges", vt::string)) {
      const std::size_t sp = v.s.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 == v.s.size())
        f.fail("tokenizer.ggml.merges: \"" + v.s + "\" is not \"left right\"");
      ranks_.emplace(v.s, rank++);  // a repeated merge keeps its first rank
    }
    // GPT-2's bytes_to_unicode.
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t cp = printable ? char32_t(b) : char32_t(256 + extra++);
      std::string u;
      minilm::append_utf8(u, cp);
      byte_symbol_[b] = u;
      symbol_byte_[cp] = static_cast<unsigned char>(b);
    }
    // SmolLM2's vocabulary lacks a few control bytes' symbols (0x04, ...):
    // a symbol BPE leaves that is no token becomes the unknown token.
    if (f.find("tokenizer.ggml.unknown_token_id"))
      unk_ = static_cast<int>(f.integer("tokenizer.ggml.unknown_token_id", 0,
                                        static_cast<std::int64_t>(tokens_.size()) - 1));
  }

  std::size_t vocab_size() const { return tokens_.size(); }
  bool is_control(int id) const { return is_control_.at(static_cast<std::size_t>(id)); }
  const std::string& token(int id) const { return tokens_.at(static_cast<std::size_t>(id)); }
  /// The id of a token's exact text. @throws std::runtime_error if absent.
  int id_of(const std::string& text) const {
    const auto it = ids_.find(text);
    if (it == ids_.end()) throw std::runtime_error("no token \"" + text + "\"");
    return it->second;
  }

  /// Token ids of `text` (control tokens' texts become those tokens).
  std::vector<int> encode(const std::string& text) const {
    std::vector<int> out;
    std::size_t plain = 0, i = 0;
    while (i < text.size()) {
      int best = -1;
      std::size_t best_len = 0;
      for (int id : control_) {
        const std::string& t = tokens_[static_cast<std::size_t>(id)];
        if (t.size() > best_len && text.compare(i, t.size(), t) == 0) {
          best = id;
          best_len = t.size();
        }
      }
      if (best < 0) {
        ++i;
        continue;
      }
      encode_plain(text.substr(plain, i - plain), out);
      out.push_back(best);
      i += best_len;
      plain = i;
    }
    encode_plain(text.substr(plain), out);
    return out;
  }

  /// The bytes token `id` stands for (a control token: its text).
  std::string decode(int id) const {
    const std::string& t = token(id);
    if (is_control(id)) return t;
    std::string out;
    for (char32_t cp : minilm::decode_utf8(t)) {
      const auto it = symbol_byte_.find(cp);
      if (it == symbol_byte_.end()) {
        minilm::append_utf8(out, cp);  // not a byte stand-in: keep it
      } else {
        out += static_cast<char>(it->second);
      }
    }
    return out;
  }

 private:
  void encode_plain(const std::string& text, std::vector<int>& out) const {
    if (text.empty()) return;
    const std::u32string s = minilm::decode_utf8(text);
    std::vector<std::pair<std::size_t, std::size_t>> pieces;
    std::size_t start = 0;
    for (std::size_t i = 0; i <= s.size(); ++i) {
      const bool digit = i < s.size() && split_digits_ && detail::is_number(s[i]);
      if (i == s.size() || digit) {
        detail::split_gpt2(s, start, i, pieces);
        if (digit) pieces.emplace_back(i, i + 1);
        start = i + 1;
      }
    }
    for (const auto& [first, last] : pieces) {
      std::string bytes;
      for (std::size_t k = first; k < last; ++k) minilm::append_utf8(bytes, s[k]);
      bpe(bytes, out);
    }
  }

  void bpe(const std::string& bytes, std::vector<int>& out) const {
    std::vector<std::string> sym;
    for (unsigned char b : bytes) sym.push_back(byte_symbol_[b]);
    while (sym.size() > 1) {
      int best = -1;
      std::size_t at = 0;
      for (std::size_t k = 0; k + 1 < sym.size(); ++k) {
        const auto it = ranks_.find(sym[k] + " " + sym[k + 1]);
        if (it != ranks_.end() && (best < 0 || it->second < best)) {
          best = it->second;
          at = k;
        }
      }
      if (best < 0) break;
      sym[at] += sym[at + 1];
      sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(at) + 1);
    }
    for (const std::string& t : sym) {
      const auto it = ids_.find(t);
      if (it != ids_.end()) {
        out.push_back(it->second);
      } else if (unk_ >= 0) {
        out.push_back(unk_);
      } else {
        throw std::runtime_error("BPE produced \"" + t + "\", not a token, and there is no "
                                 "unknown token");
      }
    }
  }

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int> ids_;
  std::unordered_map<std::string, int> ranks_;
  std::vector<int> control_;
  std::vector<bool> is_control_;
  std::string byte_symbol_[256];
  std::unordered_map<char32_t, unsigned char> symbol_byte_;
  bool split_digits_ = false;
  int unk_ = -1;
};

/// The chat template, for the ChatML form SmolLM2's GGUF carries:
///
///   [<|im_start|>system\n{default system prompt}<|im_end|>\n   if the first
///                                                message is not a system one]
///   <|im_start|>{role}\n{content}<|im_end|>\n      for each message
///   <|im_start|>assistant\n                        (add_generation_prompt)
///
/// This is not a Jinja interpreter: the template is recognised by its
/// pieces, and its default system prompt taken from it; a template of
/// another form is refused with an error.
class chat_template {
 public:
  struct message {
    std::string role, content;
  };

  /// @throws std::runtime_error if `tmpl` is not the ChatML form above.
  explicit chat_template(const std::string& tmpl) {
    const char* needed[] = {"for message in messages", "'<|im_start|>' + message['role'] + '\\n'",
                            "message['content'] + '<|im_end|>' + '\\n'", "add_generation_prompt",
                            "'<|im_start|>assistant\\n'"};
    for (const char* n : needed)
      if (tmpl.find(unescape(n)) == std::string::npos && tmpl.find(n) == std::string::npos)
        throw std::runtime_error(
            "tokenizer.chat_template is not the ChatML form this example renders (no \"" +
            std::string(n) + "\")");
    // The default system prompt, when there is one: the literal after
    // "<|im_start|>system" up to "<|im_end|>".
    const std::string head = "'<|im_start|>system";
    const std::size_t at = tmpl.find(head);
    if (at != std::string::npos && tmpl.find("messages[0]['role'] != 'system'") != std::string::npos) {
      const std::size_t end = tmpl.find("<|im_end|>", at);
      if (end == std::string::npos) throw std::runtime_error("tokenizer.chat_template: unclosed system prompt");
      std::string lit = unescape(tmpl.substr(at + head.size(), end - at - head.size()));
      if (lit.empty() || lit[0] != '\n')
        throw std::runtime_error("tokenizer.chat_template: system prompt without its newline");
      default_system_ = lit.substr(1);
      has_default_system_ = true;
    }
  }

  const std::string& default_system() const { return default_system_; }

  /// The prompt text of `messages`, ending with the assistant's header.
  std::string render(const std::vector<message>& messages) const {
    std::string out;
    if (has_default_system_ && (messages.empty() || messages[0].role != "system"))
      out += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
    for (const message& m : messages)
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    return out + "<|im_start|>assistant\n";
  }

 private:
  // Jinja string-literal escapes \n \t \' \\ (the GGUF may hold them raw).
  static std::string unescape(const std::string& s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\\' && i + 1 < s.size()) {
        const char c = s[++i];
        out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
      } else {
        out += s[i];
      }
    }
    return out;
  }

  std::string default_system_;
  bool has_default_system_ = false;
};

}  // namespace smollm
