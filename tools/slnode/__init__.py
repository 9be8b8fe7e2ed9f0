"""slnode: the technician's tool to build, provision, flash and diagnose street-light nodes.

Rooms: ``build`` (mpy-cross + manifest), ``provision`` (node config -> littlefs image),
``flash`` (esptool / mpremote), ``console`` (serial diagnostic console), ``emulate`` (lives in
``emulate.py``, owned by the firmware), ``main`` (the argparse dispatcher).
"""
