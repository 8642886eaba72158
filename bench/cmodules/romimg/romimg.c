// romimg.load(path): a ROMFS image file read into memory outside the GC heap, as a memoryview.
// On a board the ROMFS partition is memory-mapped flash; mounted with vfs.VfsRom, the .mpy files in
// it are imported in place (bytecode and constants stay in the image). This gives the unix port the
// same: only what an import creates at run time lands in the GC heap. The memory is never freed,
// as a board's partition stays mapped.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "py/runtime.h"
#include "py/objarray.h"
#include "py/mperrno.h"

static mp_obj_t romimg_load(mp_obj_t path_in) {
    const char *path = mp_obj_str_get_str(path_in);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        mp_raise_OSError(errno);
    }
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0) {
        len = ftell(f);
    }
    void *buf = len > 0 ? malloc(len) : NULL;
    if (buf == NULL || fseek(f, 0, SEEK_SET) != 0 || fread(buf, 1, len, f) != (size_t)len) {
        fclose(f);
        free(buf);
        mp_raise_OSError(MP_EIO);
    }
    fclose(f);
    return mp_obj_new_memoryview('B', len, buf);
}
static MP_DEFINE_CONST_FUN_OBJ_1(romimg_load_obj, romimg_load);

static const mp_rom_map_elem_t romimg_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_romimg) },
    { MP_ROM_QSTR(MP_QSTR_load), MP_ROM_PTR(&romimg_load_obj) },
};
static MP_DEFINE_CONST_DICT(romimg_globals, romimg_globals_table);

const mp_obj_module_t romimg_module = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&romimg_globals,
};

MP_REGISTER_MODULE(MP_QSTR_romimg, romimg_module);
