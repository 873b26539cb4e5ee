#include <stdio.h>

int main(void)
{
    puts("Hello from Kiln, in C");
    return 0;
}
