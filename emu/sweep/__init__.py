"""Sweeps and studies: study files expanded into cases and run resumably (``spec``,
``runner``), and the DiP-SD reproduction study (``study``)."""
