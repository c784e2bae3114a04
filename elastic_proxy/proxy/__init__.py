"""The supervisor: runs in the process Jupyter starts as the kernel; never runs user code."""
