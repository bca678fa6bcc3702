// Umbrella header: the whole public API of htfr.
#pragma once

#include "htfr/capture.hpp"
#include "htfr/config.hpp"
#include "htfr/context.hpp"
#include "htfr/error.hpp"
#include "htfr/hft.hpp"
#include "htfr/init.hpp"
#include "htfr/maintenance.hpp"
#include "htfr/model.hpp"
#include "htfr/ngram.hpp"
#include "htfr/pool.hpp"
#include "htfr/projection.hpp"
#include "htfr/safetensors.hpp"
#include "htfr/session.hpp"
#include "htfr/synthetic.hpp"
#include "htfr/tokenizer.hpp"
#include "htfr/verify.hpp"
