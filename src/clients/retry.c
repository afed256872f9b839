/* Retry budgets (see retry.h). */
#include "clients/retry.h"

void sb_retry_init(sb_retry_budget *rb)
{
    rb->tokens = SB_RETRY_RESERVE;
}

void sb_retry_first(sb_retry_budget *rb)
{
    rb->tokens += SB_RETRY_RATIO;
    if (rb->tokens > SB_RETRY_RESERVE)
        rb->tokens = SB_RETRY_RESERVE;
}

bool sb_retry_take(sb_retry_budget *rb)
{
    if (rb->tokens < 1.0)
        return false;
    rb->tokens -= 1.0;
    return true;
}
