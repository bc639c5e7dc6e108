"""Errors a user can cause and fix: the CLI prints them as one line, CellProfiler shows them."""


class NucleaizerError(Exception):
    """A problem with the user's input, model file or settings (not a bug)."""


class InputImageError(NucleaizerError):
    """The image cannot be segmented as given (3D stack, not an image, wrong shape)."""


class ModelFileError(NucleaizerError):
    """A model file or folder is missing, corrupt or not a nucleAIzer model."""


class OptionError(NucleaizerError):
    """An option or parameter value is invalid (unknown device, p-value out of its range);
    the CLI checks them before any image is read and exits with status 2."""


class OutputFileError(NucleaizerError):
    """A result cannot be written where it should go (folder not creatable, a folder where
    a file should be); one image's label file failing does not stop a batch."""


class CheckpointError(NucleaizerError):
    """A training run cannot be resumed from its checkpoint (truncated, corrupt, or holding
    Python objects that are not loaded)."""
