"""slnode: the technician's tool to build, provision, flash and diagnose street-light nodes.

Rooms: ``build`` (mpy-cross + manifest), ``provision`` (node config -> littlefs image),
``partitions`` (ESP image headers, partition tables, filesystem geometry per board),
``flash`` (esptool, error mapping), ``mpcopy`` (the ``--mpremote`` mode), ``console`` (serial
diagnostic console; the node side is firmware/console.py), ``progress`` (tqdm bars),
``emulate`` (owned by the firmware), ``main`` (the argparse dispatcher). The field procedure
is docs/technician.md.
"""
