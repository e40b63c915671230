"""helix-serve: serve LLMs on heterogeneous GPU clusters at max-flow throughput."""

__version__ = "0.1.0"
