"""safeneurons: find, test, attack and protect the neurons that make chat LLMs refuse harmful requests.

Implements SafeNeuron (arXiv 2602.12158) and SS-Neurons (arXiv 2602.01283) on Hugging Face decoders."""

from safeneurons.errors import SafeneuronsError
from safeneurons.io import package_version

__version__ = package_version()
__all__ = ["SafeneuronsError", "__version__"]
