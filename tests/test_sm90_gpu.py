"""SM 9.x: the Hopper kernel (backend ``sm90``) against the reference over a seeded sweep, its tile
counts against the simulator, CUDA graphs and torch.compile.  The suite is ``kernel_gpu_suite``."""

from conftest import requires_sm90
from kernel_gpu_suite import define_tests

pytestmark = requires_sm90
globals().update(define_tests(90, "sm90"))
