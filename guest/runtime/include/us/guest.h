/* Everything an image needs: include this one header. */
#ifndef US_GUEST_H
#define US_GUEST_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "understudy_abi.h"
#include "us/cmdline.h"
#include "us/console.h"
#include "us/exit.h"
#include "us/hypercall.h"
#include "us/io.h"
#include "us/runtime.h"
#include "us/time.h"
#endif
