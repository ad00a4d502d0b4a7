// kiln's optimizer layer in one include: the optimizers, LR schedules and gradient clipping.
#pragma once

#include "optim/adagrad.h"
#include "optim/adam.h"
#include "optim/clip_grad.h"
#include "optim/mixed_precision.h"
#include "optim/optimizer.h"
#include "optim/rmsprop.h"
#include "optim/schedule.h"
#include "optim/sgd.h"
