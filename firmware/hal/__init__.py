"""Hardware-abstraction layer: ``base`` (the interface), ``emulated`` and ``esp32`` back-ends."""
