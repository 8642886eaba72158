// ESP32_GENERIC with ROMFS: vfs.rom_ioctl on the "romfs" partition, mounted at /rom at start-up
// ("/rom" and "/rom/lib" are appended to sys.path; upload.sh --romfs's main.py puts /rom first).
#define MICROPY_HW_BOARD_NAME "ESP32 with ROMFS"
#define MICROPY_HW_MCU_NAME "ESP32"
#define MICROPY_VFS_ROM (1)
