"""Pure `torch.nn` networks: recurrent stacks and the task heads built on them."""

from trainer.models.classifier import Classifier, ClassifierConfig
from trainer.models.language_model import LanguageModel, LanguageModelConfig
from trainer.models.recurrent import CELLS, RecurrentStack, State, detach_hidden
from trainer.models.seq2seq import Seq2Seq, Seq2SeqConfig

__all__ = [
    "CELLS",
    "Classifier",
    "ClassifierConfig",
    "LanguageModel",
    "LanguageModelConfig",
    "RecurrentStack",
    "Seq2Seq",
    "Seq2SeqConfig",
    "State",
    "detach_hidden",
]
