from framework.text.ctc import greedy_decode
from framework.text.metrics import ErrorRate, edit_distance
from framework.text.tokenizer import CharTokenizer

__all__ = ["CharTokenizer", "ErrorRate", "edit_distance", "greedy_decode"]
