// Process-wide runtime settings applied once by programs (CLI, benchmarks): glibc malloc keeps
// large freed blocks instead of returning them to the kernel on every step (training and
// decoding allocate the same large tensors over and over: measured 18.3 s -> 10.0 s for 4
// LLaVA steps on 2 cores), and intra-op threads default to the cores when OMP_NUM_THREADS is unset.
#pragma once

namespace vadapt {

void configure_runtime();

}  // namespace vadapt
