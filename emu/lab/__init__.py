"""Lab mode: draftnet's roles as commands on real machines (``emu.lab.roles``), over TLS with the
lab's credentials (``emu.lab.certs``, ``emu.lab.tls``), and the lab file that says which machine
runs which role (``emu.lab.labfile``).

Layer: emu (processes, sockets, files).
"""
