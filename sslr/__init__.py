"""sslr: sign-symmetry learning rules as fine-tuners, with honest robustness evaluation."""

__version__ = "0.1.0"
