from framework.models.deepspeech2 import DeepSpeech2, count_parameters

__all__ = ["DeepSpeech2", "count_parameters"]
