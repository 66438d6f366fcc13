import os
import signal

os.environ.setdefault("OMP_NUM_THREADS", "2")
# a suite started in the background (`nohup ... &`, some CI runners) ignores SIGINT, and the commands the tests
# start would inherit the ignore: the Ctrl-C tests need it delivered
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def grf16():
    from sciencegen.targets import GaussianRandomField

    return GaussianRandomField(16)
