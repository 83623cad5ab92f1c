// One attention call, compiled into each translation unit of the ABI test
// with that unit's own instruction-set flags.
#pragma once

#include <string>
#include <vector>

namespace abi_test {
// Runs a fixed causal attention problem; returns the output.
std::vector<float> run_wide();    // compiled with the widest flags available
std::vector<float> run_narrow();  // compiled with the project's default flags

// What one unit computed through attn::kv_cache and attn::mla_cache, and the
// names its compiler gave those types.
struct cache_run {
  std::string abi;             // the unit's ATTN_ABI namespace, e.g. "abi_avx2_omp"
  std::string kv_cache_type;   // typeid(attn::kv_cache<float>).name()
  std::string mla_cache_type;  // typeid(attn::mla_cache<float>).name()
  std::vector<float> attend;   // kv_cache::attend: a prefill, then one decoded token
  std::vector<float> direct;   // the same attention through scaled_dot_product_attention
  std::vector<float> mla;      // multi_head_latent_attention over an mla_cache: prefill, decode
};
cache_run run_caches_wide();
cache_run run_caches_narrow();
}  // namespace abi_test
