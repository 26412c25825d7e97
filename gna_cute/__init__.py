"""GNA kernels in the CuTe DSL."""
