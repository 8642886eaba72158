# romimg: a ROMFS image held outside the GC heap (bench/build32.sh --romfs builds it in).
ROMIMG_MOD_DIR := $(USERMOD_DIR)
SRC_USERMOD += $(ROMIMG_MOD_DIR)/romimg.c
