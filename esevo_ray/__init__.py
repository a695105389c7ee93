"""esevo_ray: the self-evolution framework for personalized emotional support, on Ray."""

__version__ = "0.1.0"
