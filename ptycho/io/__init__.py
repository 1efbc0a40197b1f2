"""Readers and writers of other programs' files (backend-neutral; optional packages imported
lazily): :mod:`.ptychodus_files` for ptychodus's HDF5 product and diffraction files."""
