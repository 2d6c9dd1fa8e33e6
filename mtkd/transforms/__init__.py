"""Pure tensor/array transforms (MATLAB bicubic, colour, ...): leaves that import nothing else of mtkd."""
