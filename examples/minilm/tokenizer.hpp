// examples/minilm/tokenizer.hpp: BERT's uncased WordPiece tokenizer, as
// Hugging Face's tokenizers library runs it for all-MiniLM-L6-v2
// (BertNormalizer, BertPreTokenizer, WordPiece; tokenizer.json):
//
//   1. clean text: drop NUL, U+FFFD and control/format/private-use characters
//      (categories Cc, Cf, Co), except \t \n \r, which like every other
//      White_Space character become ' ';
//   2. put spaces around CJK ideographs, so each is a word of its own;
//   3. strip accents (NFD, then drop nonspacing marks, Mn) and lower-case;
//   4. split on whitespace, and split off every punctuation character (ASCII
//      !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~ and Unicode P*) as a word of its own;
//   5. WordPiece: each word becomes the longest vocabulary entry that
//      prefixes it, then the longest "##"-prefixed entry that prefixes the
//      rest, and so on; a word that cannot be covered, or is longer than 100
//      characters, becomes [UNK];
//   6. [CLS] pieces... [SEP], truncated to max_length tokens.
//
// The character classes and step 3's folding come from tables generated from
// Unicode 14 (unicode_tables.hpp), code point by code point: NFD's
// reordering of several combining marks does not matter here, since all of
// them are dropped. Unassigned code points are kept, as the tokenizers
// library does. Checked against that library on 4,000 lines of English
// prose and random text from 15 Unicode blocks: identical ids except where a
// character is new in Unicode 14 (U+061D), which the library's older tables
// do not know.
#pragma once

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "unicode_tables.hpp"
#include "utf8.hpp"

namespace minilm {

class wordpiece_tokenizer {
 public:
  /// vocab.txt: one token a line, the line number (from 0) is its id.
  explicit wordpiece_tokenizer(const std::string& vocab_path) {
    std::ifstream in(vocab_path, std::ios::binary);
    if (!in) throw std::runtime_error(vocab_path + ": cannot open");
    std::string line;
    int id = 0;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      vocab_[line] = id++;  // a repeated line: the last wins, as in tokenizers
    }
    size_ = static_cast<std::size_t>(id);
    cls_ = special("[CLS]");
    sep_ = special("[SEP]");
    unk_ = special("[UNK]");
    pad_ = special("[PAD]");
  }

  int cls_id() const { return cls_; }
  int sep_id() const { return sep_; }
  int pad_id() const { return pad_; }
  int unk_id() const { return unk_; }
  std::size_t vocab_size() const { return size_; }  ///< lines of vocab.txt

  /// Token ids of one sentence (UTF-8): [CLS] pieces [SEP], at most
  /// max_length (>= 2) of them.
  std::vector<int> encode(const std::string& text, std::size_t max_length) const {
    max_length = std::max<std::size_t>(max_length, 2);
    std::vector<int> ids{cls_};
    for (const std::u32string& word : words(text)) {
      pieces(word, ids);
      if (ids.size() >= max_length - 1) break;
    }
    if (ids.size() > max_length - 1) ids.resize(max_length - 1);
    ids.push_back(sep_);
    return ids;
  }

  /// Steps 1-4: the normalised words of `text`.
  static std::vector<std::u32string> words(const std::string& text) {
    std::vector<std::u32string> out;
    std::u32string word;
    auto flush = [&] {
      if (!word.empty()) out.push_back(std::move(word));
      word.clear();
    };
    for (char32_t c : decode_utf8(text)) {
      if (c == 0 || c == 0xFFFD || is_control(c)) continue;
      if (is_whitespace(c)) {
        flush();
        continue;
      }
      if (in_ranges(unicode::nonspacing_mark, c)) continue;  // a lone accent
      char32_t folded[3];
      const int count = fold(c, folded);
      if (is_cjk(c)) {  // a word of its own
        flush();
        out.push_back(std::u32string(folded, folded + count));
        continue;
      }
      for (int k = 0; k < count; ++k) {
        if (is_punctuation(folded[k])) {
          flush();
          out.push_back(std::u32string(1, folded[k]));
        } else {
          word += folded[k];
        }
      }
    }
    flush();
    return out;
  }

 private:
  int special(const char* token) const {
    const auto it = vocab_.find(token);
    if (it == vocab_.end()) throw std::runtime_error(std::string("vocab.txt lacks ") + token);
    return it->second;
  }

  // Step 5 for one word, appended to ids.
  void pieces(const std::u32string& word, std::vector<int>& ids) const {
    if (word.size() > 100) {
      ids.push_back(unk_);
      return;
    }
    std::vector<int> found;
    std::string candidate;
    for (std::size_t start = 0; start < word.size();) {
      std::size_t end = word.size();
      int id = -1;
      for (; end > start; --end) {
        candidate = start > 0 ? "##" : "";
        for (std::size_t i = start; i < end; ++i) append_utf8(candidate, word[i]);
        const auto it = vocab_.find(candidate);
        if (it != vocab_.end()) {
          id = it->second;
          break;
        }
      }
      if (id < 0) {
        ids.push_back(unk_);
        return;
      }
      found.push_back(id);
      start = end;
    }
    ids.insert(ids.end(), found.begin(), found.end());
  }

  template <std::size_t N>
  static bool in_ranges(const char32_t (&table)[N][2], char32_t c) {
    // Sorted, disjoint ranges: the last one starting at or before c.
    const auto it = std::upper_bound(std::begin(table), std::end(table), c,
                                     [](char32_t v, const char32_t(&r)[2]) { return v < r[0]; });
    return it != std::begin(table) && c <= (*(it - 1))[1];
  }

  static bool is_whitespace(char32_t c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' ||
           (c >= 0x80 && in_ranges(unicode::whitespace, c));
  }
  static bool is_control(char32_t c) {
    if (c == '\t' || c == '\n' || c == '\r') return false;
    if (c < 0x20 || c == 0x7F) return true;
    if (c >= 0xE000 && c <= 0xF8FF) return true;  // private use
    if (c >= 0xF0000) return true;                // supplementary private use
    return c >= 0x80 && in_ranges(unicode::other, c);
  }
  static bool is_punctuation(char32_t c) {
    if (c < 0x80)
      return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
             (c >= 123 && c <= 126);
    return in_ranges(unicode::punctuation, c);
  }
  // The CJK Unified Ideographs blocks, as BERT defines "Chinese character".
  static bool is_cjk(char32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
  }
  // c with accents stripped (NFD, nonspacing marks dropped), lower-cased:
  // writes 1 to 3 code points to out and returns how many.
  static int fold(char32_t c, char32_t* out) {
    if (c < 0x80) {
      out[0] = c >= 'A' && c <= 'Z' ? c + 32 : c;
      return 1;
    }
    if (c >= 0xAC00 && c <= 0xD7A3) {  // Hangul syllable: its jamo, by formula
      const char32_t s = c - 0xAC00;
      out[0] = 0x1100 + s / 588;
      out[1] = 0x1161 + (s % 588) / 28;
      out[2] = 0x11A7 + s % 28;
      return s % 28 ? 3 : 2;
    }
    const auto m =
        std::lower_bound(std::begin(unicode::multi_folds), std::end(unicode::multi_folds), c,
                         [](const unicode::fold_multi& f, char32_t v) { return f.code < v; });
    if (m != std::end(unicode::multi_folds) && m->code == c) {
      int n = 0;
      while (n < 3 && m->to[n]) out[n] = m->to[n], ++n;
      return n;
    }
    out[0] = c;
    const auto it =
        std::upper_bound(std::begin(unicode::folds), std::end(unicode::folds), c,
                         [](char32_t v, const unicode::fold_run& r) { return v < r.first; });
    if (it != std::begin(unicode::folds)) {
      const unicode::fold_run& r = *(it - 1);
      const char32_t stride = static_cast<char32_t>(r.stride), k = (c - r.first) / stride;
      if (c <= r.last && (c - r.first) % stride == 0)
        out[0] = static_cast<char32_t>(static_cast<long>(r.target) + long(r.step) * long(k));
    }
    return 1;
  }

  std::unordered_map<std::string, int> vocab_;
  std::size_t size_ = 0;
  int cls_ = 0, sep_ = 0, unk_ = 0, pad_ = 0;
};

}  // namespace minilm
