"""SM 10.x: the Blackwell kernel (backend ``sm100``), the same suite as the Hopper kernel's
(``kernel_gpu_suite``).  Never run yet: no Blackwell GPU has been available."""

from conftest import requires_sm100
from kernel_gpu_suite import define_tests

pytestmark = requires_sm100
globals().update(define_tests(100, "sm100"))
