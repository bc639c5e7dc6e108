"""Errors a user can cause and fix: the CLI prints them as one line, CellProfiler shows them."""


class NucleaizerError(Exception):
    """A problem with the user's input, model file or settings (not a bug)."""


class InputImageError(NucleaizerError):
    """The image cannot be segmented as given (3D stack, not an image, wrong shape)."""


class ModelFileError(NucleaizerError):
    """A model file or folder is missing, corrupt or not a nucleAIzer model."""
