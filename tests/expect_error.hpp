// tests/expect_error.hpp: asserts that a call throws attn::error, and nothing
// else, with a message in the library's format that names what it should.
#pragma once

#include <gtest/gtest.h>

#include <attn/error.hpp>
#include <exception>
#include <string>
#include <vector>

namespace attn_test {

/// f() must throw attn::error whose message contains every needle (the
/// argument's name, say) and the "expected ... got ..." parts.
template <class F>
void expect_error(const std::string& label, F&& f, const std::vector<const char*>& needles) {
  SCOPED_TRACE(label);
  try {
    f();
    ADD_FAILURE() << label << ": no exception thrown";
  } catch (const attn::error& e) {
    const std::string w = e.what();
    for (const char* n : needles)
      EXPECT_NE(w.find(n), std::string::npos)
          << "message \"" << w << "\" does not contain \"" << n << "\"";
    EXPECT_NE(w.find("expected"), std::string::npos) << w;
    EXPECT_NE(w.find("got"), std::string::npos) << w;
  } catch (const std::exception& e) {
    ADD_FAILURE() << label << ": threw a type other than attn::error: " << e.what();
  } catch (...) {
    ADD_FAILURE() << label << ": threw a non-std exception";
  }
}

}  // namespace attn_test
