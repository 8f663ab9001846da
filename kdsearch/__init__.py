"""kdsearch: search knowledge-distillation students, trading accuracy against size."""

__version__ = "0.1.0"
