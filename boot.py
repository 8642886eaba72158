# Runs first at every boot: a short banner, nothing that could block the REPL (ampy needs it).
import gc

gc.collect()
print("datastream firmware: boot, mem_free %d" % gc.mem_free())
