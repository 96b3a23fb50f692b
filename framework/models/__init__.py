from framework.models.conformer import ConformerCTC
from framework.models.deepspeech2 import DeepSpeech2
from framework.models.parameters import count_parameters, trainable_parameters
from framework.models.transducer import Transducer
from framework.models.wideresnet import WideResNet

__all__ = ["ConformerCTC", "DeepSpeech2", "Transducer", "WideResNet", "count_parameters", "trainable_parameters"]
