"""elastic-proxy: a Jupyter kernel that never loses a notebook's variables.

`proxy/` runs in the supervisor process, `inner_agent/` inside the kernel child,
`store/` is the checkpoint format shared by both and by the CLI.
"""

__version__ = "0.1.0"
