"""Option files: typed schema, validation before anything is built, and BasicSR's command line.
Imports utils, transforms, weights and training; `cli` (the driver behind train.py and test.py) may also
import archs, losses, metrics, methods, teachers and data."""
from mtkd.config.errors import OptionError, OptionProblem
from mtkd.config.schema import (DATASET_OPTION_SCHEMAS, MODEL_OPTION_SCHEMAS, register_dataset_options,
                                register_model_options)
from mtkd.config.validate import ValidatedOptions, validate_options

__all__ = ['OptionError', 'OptionProblem', 'ValidatedOptions', 'validate_options', 'register_model_options',
           'register_dataset_options', 'MODEL_OPTION_SCHEMAS', 'DATASET_OPTION_SCHEMAS']
