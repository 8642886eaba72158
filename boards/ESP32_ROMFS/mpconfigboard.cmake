# An ESP32 (4 MB flash or more) image with a ROMFS partition: MicroPython v1.26.1's ESP32_GENERIC plus
# vfs.rom_ioctl and the port's partitions-4MiB-romfs.csv (a 128 KB "romfs" partition after the app;
# the filesystem takes the rest of the flash, as on every board since 1.26). Modules in the ROMFS are
# imported in place: their bytecode stays in flash. Build it from MicroPython's source (ESP-IDF set up
# as ports/esp32/README.md says), flash it like a stock image, then ./upload.sh --romfs:
#   make -C ports/esp32 BOARD_DIR=/path/to/this/repo/boards/ESP32_ROMFS
# docs/deploy.md "Build your own image" has the figures.
set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    boards/sdkconfig.ble
    ${MICROPY_BOARD_DIR}/sdkconfig.board
)
